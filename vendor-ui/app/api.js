// The admin API client: keeps the session token, adds it to every call and turns API errors into readable exceptions.

const TOKEN_STORAGE_KEY = "octopus.token";
let onUnauthorized = () => {};

export function sessionToken() { return localStorage.getItem(TOKEN_STORAGE_KEY); }
export function setSessionToken(token) {
  if (token) localStorage.setItem(TOKEN_STORAGE_KEY, token); else localStorage.removeItem(TOKEN_STORAGE_KEY);
}
/** The shell registers what happens when a call comes back 401: the session is gone, so it shows the login page. */
export function whenUnauthorized(handler) { onUnauthorized = handler; }

/** An API failure with the server's message, the HTTP status and, for 400s, the field the message names. */
export class ApiError extends Error {
  constructor(message, status, type) { super(message); this.status = status; this.type = type; }
}

/** Calls the admin API and returns the parsed JSON, or throws ApiError with the server's own message. */
export async function api(method, path, body, options = {}) {
  const headers = {};
  const token = sessionToken();
  if (token) headers.authorization = `Bearer ${token}`;
  if (body !== undefined) headers["content-type"] = "application/json";
  let response;
  try {
    response = await fetch(`/api/v1${path}`, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (networkError) {
    throw new ApiError(`network error: ${networkError.message}`, 0, "network");
  }
  if (response.status === 401 && !options.keepSessionOn401) {
    setSessionToken(null);
    onUnauthorized();
  }
  if (options.raw) {
    if (!response.ok) throw new ApiError(`HTTP ${response.status}`, response.status, "http");
    return response;
  }
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!response.ok) {
    const message = data?.error?.message || `HTTP ${response.status} ${response.statusText}`;
    throw new ApiError(message, response.status, data?.error?.type);
  }
  return data;
}

/** Builds a query string from an object, leaving out empty values. */
export function query(parameters) {
  const search = new URLSearchParams();
  for (const [name, value] of Object.entries(parameters)) {
    if (value !== undefined && value !== null && value !== "") search.set(name, value);
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

/** The browser's UTC offset as `+HH:MM`, which the stats endpoints take to bucket days and hours locally. */
export function timeZoneOffset() {
  const minutesEast = -new Date().getTimezoneOffset();
  const sign = minutesEast >= 0 ? "+" : "-";
  const absolute = Math.abs(minutesEast);
  return `${sign}${String(Math.floor(absolute / 60)).padStart(2, "0")}:${String(absolute % 60).padStart(2, "0")}`;
}

/** Today's date in the browser's time zone as YYYY-MM-DD. */
export function localDate(date = new Date()) {
  return `${date.getFullYear()}-${String(date.getMonth() + 1).padStart(2, "0")}-${String(date.getDate()).padStart(2, "0")}`;
}
