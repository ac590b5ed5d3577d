// The logs page: filtered, paged request log, a detail view with the attempt timeline and bodies, and a live tail over SSE.
import { html, useState, useEffect } from "../lib.js";
import { api, query, sessionToken } from "../api.js";
import { t } from "../i18n.js";
import { useLoad, LoadState, ErrorMessage, Badge, formatNumber, formatCost, formatMilliseconds, formatTime } from "../components.js";

const PAGE_SIZE = 50;

/** A datetime-local value (browser time) to RFC3339 for the API; empty stays empty. */
function localInputToRfc3339(value) {
  return value ? new Date(value).toISOString() : "";
}

function prettyBody(body) {
  if (body === null || body === undefined) return null;
  if (typeof body !== "string") return JSON.stringify(body, null, 2);
  try { return JSON.stringify(JSON.parse(body), null, 2); } catch { return body; }
}

function LogDetail({ id, onClose }) {
  const detail = useLoad(() => api("GET", `/logs/${id}`), [id]);
  const log = detail.data;
  return html`<section class="card" data-testid="log-detail" aria-label=${t("Request {id}", { id })}>
    <div class="panel-head"><h2>${t("Request {id}", { id })}</h2><button type="button" onClick=${onClose}>${t("Close")}</button></div>
    <${LoadState} state=${detail} />
    ${log ? html`
      <dl class="details">
        <dt>${t("Time")}</dt><dd>${formatTime(log.time)}</dd>
        <dt>${t("Client key")}</dt><dd>${log.api_key_name || "–"}</dd>
        <dt>${t("Group")}</dt><dd>${log.group || "–"}</dd>
        <dt>${t("Channel")}</dt><dd>${log.channel_name || "–"} / ${log.model || "–"}</dd>
        <dt>${t("Status")}</dt><dd>${log.status_code} ${log.success ? html`<${Badge} kind="good">${t("success")}</${Badge}>` : html`<${Badge} kind="bad">${t("failed")}</${Badge}>`}</dd>
        <dt>${t("Usage")}</dt><dd>${t("in {input} · out {output} · cache read {read} · cache write {write}", { input: formatNumber(log.input_tokens), output: formatNumber(log.output_tokens), read: formatNumber(log.cache_read_tokens), write: formatNumber(log.cache_write_tokens) })}${log.reasoning_tokens ? ` · ${t("reasoning")} ${formatNumber(log.reasoning_tokens)}` : ""}</dd>
        <dt>${t("Cost")}</dt><dd data-testid="log-detail-cost">${formatCost(log.cost)}</dd>
        <dt>${t("Latency")}</dt><dd>${formatMilliseconds(log.latency_ms)} (${t("TTFT")} ${formatMilliseconds(log.ttft_ms)})${log.stream ? ` · ${t("stream")}` : ""}</dd>
        ${log.error ? html`<dt>${t("Error")}</dt><dd class="error">${log.error}</dd>` : null}
      </dl>
      <h3>${t("Attempts")}</h3>
      <ol class="timeline" data-testid="attempts">${(log.attempt_details || []).map((attempt) => html`<li class=${attempt.outcome === "success" ? "good" : "bad"}>
        <strong>${attempt.channel_name || `#${attempt.channel_id}`}</strong> / ${attempt.model} <${Badge} kind=${attempt.outcome === "success" ? "good" : "bad"}>${t(attempt.outcome || "")}</${Badge}>
        <span class="muted"> ${attempt.status ?? "–"} · ${formatMilliseconds(attempt.duration_ms)} · ${attempt.base_url || ""}${attempt.key_id ? ` · ${t("key")} #${attempt.key_id}` : ""}</span></li>`)}
        ${(log.attempt_details || []).length ? null : html`<li class="muted">${t("No attempt details.")}</li>`}</ol>
      ${log.request_body ? html`<details><summary>${t("Request body")}</summary><pre>${prettyBody(log.request_body)}</pre></details>` : null}
      ${log.response_body ? html`<details><summary>${t("Response body")}</summary><pre>${prettyBody(log.response_body)}</pre></details>` : null}
    ` : null}
  </section>`;
}

export function LogsPage() {
  const [filters, setFilters] = useState({ group: "", channel_id: "", api_key_id: "", status: "", from: "", to: "" });
  const [page, setPage] = useState(1);
  const [selected, setSelected] = useState(null);
  const [tailing, setTailing] = useState(false);
  const [tailError, setTailError] = useState(null);
  const [liveItems, setLiveItems] = useState([]);
  const channels = useLoad(() => api("GET", "/channels"), []);
  const keys = useLoad(() => api("GET", "/api-keys"), []);
  const groups = useLoad(() => api("GET", "/groups"), []);
  const parameters = { page, page_size: PAGE_SIZE, ...filters, from: localInputToRfc3339(filters.from), to: localInputToRfc3339(filters.to) };
  const logs = useLoad(() => api("GET", `/logs${query(parameters)}`), [JSON.stringify(parameters)]);
  const listOf = (state) => (Array.isArray(state.data) ? state.data : state.data?.items || []);

  // EventSource cannot send an Authorization header, so the tail endpoint takes the session token in the query.
  useEffect(() => {
    if (!tailing) return undefined;
    setTailError(null);
    const source = new EventSource(`/api/v1/logs/tail${query({ token: sessionToken() })}`);
    source.onmessage = (event) => {
      try { setLiveItems((previous) => [JSON.parse(event.data), ...previous].slice(0, 200)); } catch { /* A malformed event is skipped; the next one may be fine. */ }
    };
    source.onerror = () => setTailError(new Error(t("The live tail lost its connection; retrying…")));
    source.onopen = () => setTailError(null);
    return () => source.close();
  }, [tailing]);

  const setFilter = (name, value) => { setFilters({ ...filters, [name]: value }); setPage(1); };
  const items = [...(tailing ? liveItems.filter((live) => !listOf(logs).some((item) => item.id === live.id)) : []), ...listOf(logs)];
  const total = logs.data?.total ?? 0;
  const pages = Math.max(1, Math.ceil(total / PAGE_SIZE));
  const select = (name, label, options) => html`<label class="filter"><span class="field-label">${label}</span><select name=${name} value=${filters[name]} onChange=${(event) => setFilter(name, event.currentTarget.value)}>
    <option value="">${t("All")}</option>${options.map(([value, text]) => html`<option value=${value}>${text}</option>`)}</select></label>`;

  return html`<div class="stack">
    <form class="filters" onSubmit=${(event) => event.preventDefault()} aria-label=${t("Filters")}>
      ${select("group", t("Group"), listOf(groups).map((group) => [group.name, group.name]))}
      ${select("channel_id", t("Channel"), listOf(channels).map((channel) => [channel.id, channel.name]))}
      ${select("api_key_id", t("Client key"), listOf(keys).map((key) => [key.id, key.name]))}
      ${select("status", t("Status"), [["success", t("success")], ["failed", t("failed")]])}
      <label class="filter"><span class="field-label">${t("From")}</span><input type="datetime-local" value=${filters.from} onInput=${(event) => setFilter("from", event.currentTarget.value)} /></label>
      <label class="filter"><span class="field-label">${t("To")}</span><input type="datetime-local" value=${filters.to} onInput=${(event) => setFilter("to", event.currentTarget.value)} /></label>
      <label class="filter checkbox"><input type="checkbox" checked=${tailing} data-testid="live-tail" onChange=${(event) => { setTailing(event.currentTarget.checked); setLiveItems([]); }} /> ${t("Live tail")}</label>
      <button type="button" onClick=${logs.reload}>${t("Refresh")}</button>
    </form>
    <${ErrorMessage} error=${tailError} />
    ${selected ? html`<${LogDetail} id=${selected} onClose=${() => setSelected(null)} />` : null}
    <${LoadState} state=${logs} />
    <div class="table-scroll"><table class="responsive" data-testid="log-table">
      <thead><tr><th>${t("Time")}</th><th>${t("Client key")}</th><th>${t("Group")}</th><th>${t("Channel")}</th><th>${t("Status")}</th><th class="number">${t("Tokens")}</th><th class="number">${t("Cost")}</th><th class="number">${t("Latency")}</th><th></th></tr></thead>
      <tbody>${items.map((item) => html`<tr class=${item.success ? "" : "failed-row"}>
        <td data-label=${t("Time")}>${formatTime(item.time)}</td>
        <td data-label=${t("Client key")}>${item.api_key_name || "–"}</td>
        <td data-label=${t("Group")}>${item.group || "–"}</td>
        <td data-label=${t("Channel")}>${item.channel_name || "–"} <small class="muted">${item.model || ""}</small></td>
        <td data-label=${t("Status")}><${Badge} kind=${item.success ? "good" : "bad"}>${item.status_code}</${Badge}>${item.attempts > 1 ? html` <small class="muted">${t("{count} attempts", { count: item.attempts })}</small>` : null}</td>
        <td data-label=${t("Tokens")} class="number">${formatNumber(item.input_tokens)} / ${formatNumber(item.output_tokens)}</td>
        <td data-label=${t("Cost")} class="number">${formatCost(item.cost)}</td>
        <td data-label=${t("Latency")} class="number">${formatMilliseconds(item.latency_ms)}</td>
        <td class="actions-cell"><button type="button" onClick=${() => setSelected(item.id)}>${t("Details")}</button></td>
      </tr>`)}
      ${logs.data && !items.length ? html`<tr><td colspan="9" class="muted">${t("No requests match.")}</td></tr>` : null}</tbody>
    </table></div>
    <nav class="pager row" aria-label=${t("Pages")}>
      <button type="button" onClick=${() => setPage(page - 1)} disabled=${page <= 1}>← ${t("Previous")}</button>
      <span>${t("Page {page} of {pages} · {total} requests", { page, pages, total })}</span>
      <button type="button" onClick=${() => setPage(page + 1)} disabled=${page >= pages}>${t("Next")} →</button>
    </nav>
  </div>`;
}
