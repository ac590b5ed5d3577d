// The login form and the password change form (forced after the first login, also used from Settings).
import { html, useState } from "../lib.js";
import { api, setSessionToken } from "../api.js";
import { t } from "../i18n.js";
import { Field, ErrorMessage, DoneMessage, useAction } from "../components.js";

export function LoginPage({ onLoggedIn }) {
  const [username, setUsername] = useState("admin");
  const [password, setPassword] = useState("");
  const action = useAction();
  const submit = async (event) => {
    event.preventDefault();
    const login = await action.run(() => api("POST", "/auth/login", { username, password }, { keepSessionOn401: true }));
    if (login) { setSessionToken(login.token); onLoggedIn(login); }
  };
  return html`<form class="card narrow" onSubmit=${submit} aria-labelledby="login-title">
    <h1 id="login-title">${t("Sign in to octopus")}</h1>
    <${Field} label=${t("Username")}><input name="username" autocomplete="username" required value=${username} onInput=${(event) => setUsername(event.currentTarget.value)} /></${Field}>
    <${Field} label=${t("Password")}><input name="password" type="password" autocomplete="current-password" required value=${password} onInput=${(event) => setPassword(event.currentTarget.value)} /></${Field}>
    <${ErrorMessage} error=${action.error} />
    <button type="submit" class="primary" disabled=${action.busy}>${t("Sign in")}</button>
  </form>`;
}

/** Changes the password; the API answers with a fresh token because the change ends every other session. */
export function PasswordChangePage({ forced, onChanged }) {
  const [oldPassword, setOldPassword] = useState("");
  const [newPassword, setNewPassword] = useState("");
  const [repeatPassword, setRepeatPassword] = useState("");
  const [validation, setValidation] = useState(null);
  const action = useAction();
  const submit = async (event) => {
    event.preventDefault();
    if (newPassword.length < 8) return setValidation(t("The new password needs at least 8 characters."));
    if (newPassword !== repeatPassword) return setValidation(t("The two new passwords differ."));
    setValidation(null);
    const result = await action.run(() => api("POST", "/auth/password", { old_password: oldPassword, new_password: newPassword }), t("Password changed."));
    if (result) { setSessionToken(result.token); setOldPassword(""); setNewPassword(""); setRepeatPassword(""); onChanged?.(); }
  };
  return html`<form class=${forced ? "card narrow" : "card"} onSubmit=${submit} data-testid="password-form">
    <h2>${t("Change password")}</h2>
    ${forced ? html`<p>${t("Please choose a new password before you continue.")}</p>` : null}
    <${Field} label=${t("Current password")}><input name="old_password" type="password" autocomplete="current-password" required value=${oldPassword} onInput=${(event) => setOldPassword(event.currentTarget.value)} /></${Field}>
    <${Field} label=${t("New password")} error=${validation}><input name="new_password" type="password" autocomplete="new-password" required value=${newPassword} onInput=${(event) => setNewPassword(event.currentTarget.value)} /></${Field}>
    <${Field} label=${t("Repeat new password")}><input name="repeat_password" type="password" autocomplete="new-password" required value=${repeatPassword} onInput=${(event) => setRepeatPassword(event.currentTarget.value)} /></${Field}>
    <${ErrorMessage} error=${action.error} />
    <${DoneMessage} text=${action.done} />
    <button type="submit" class="primary" disabled=${action.busy}>${t("Change password")}</button>
  </form>`;
}
