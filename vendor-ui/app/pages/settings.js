// The settings page: every runtime setting, backup export and import, the password change and the version.
import { html, useState } from "../lib.js";
import { api, query } from "../api.js";
import { t } from "../i18n.js";
import { PasswordChangePage } from "./login.js";
import { useLoad, useAction, LoadState, ErrorMessage, DoneMessage, Field, Toggle, confirmAction } from "../components.js";

/** Labels and hints for the known settings; a setting the backend adds later still shows, under its own name. */
const SETTING_LABELS = {
  stats_save_interval_seconds: ["Stats save interval (seconds)", "How often counted requests are written to the database."],
  log_retention_days: ["Log retention (days)", "1 or more; older logs are deleted."],
  log_max_rows: ["Maximum log rows", "0 = keep no request logs."],
  log_bodies: ["Keep request and response bodies", ""],
  log_body_max_bytes: ["Largest kept body (bytes)", ""],
  price_sync_interval_hours: ["Price sync interval (hours)", "0 = off."],
  model_sync_interval_hours: ["Model sync interval (hours)", "0 = off."],
  models_dev_url: ["models.dev URL", ""],
  metrics_enabled: ["Prometheus metrics", ""],
  metrics_token: ["Metrics token", "Empty = no token needed."],
  response_store_hours: ["Stored responses kept (hours)", "For the Responses API's previous_response_id."],
  cors_allowed_origins: ["Browser origins allowed on the relay", "Web pages that may call /v1 from a browser, e.g. https://chat.example.com, comma separated; * = any. Empty = none. The admin API is never opened."],
};

function SettingsForm({ initial, onSaved }) {
  const [values, setValues] = useState(initial);
  const [fieldErrors, setFieldErrors] = useState({});
  const action = useAction();
  const changes = Object.fromEntries(Object.entries(values).filter(([name, value]) => value !== initial[name]));
  const submit = async (event) => {
    event.preventDefault();
    const found = {};
    for (const [name, value] of Object.entries(changes)) {
      if (typeof initial[name] === "number" && !(Number.isFinite(value) && value >= 0)) found[name] = t("Enter a number of 0 or more.");
    }
    setFieldErrors(found);
    if (Object.keys(found).length) return;
    const saved = await action.run(() => api("PUT", "/settings", changes), t("Settings saved."));
    if (saved) onSaved(saved);
  };
  // A 400 names the field in its message; the message is shown next to that field as well as at the button.
  const errorField = action.error ? Object.keys(values).find((name) => action.error.message.includes(name)) : null;
  return html`<form class="card form-grid" onSubmit=${submit} data-testid="settings-form" novalidate>
    <h2 class="field-wide">${t("Runtime settings")}</h2>
    ${Object.entries(values).map(([name, value]) => {
      const [label, hint] = SETTING_LABELS[name] || [name, ""];
      const error = fieldErrors[name] || (errorField === name ? action.error.message : null);
      if (typeof initial[name] === "boolean") {
        return html`<div class="field"><span class="field-label">${t(label)}</span><${Toggle} label=${t(label)} checked=${value} onChange=${(checked) => setValues({ ...values, [name]: checked })} />${error ? html`<small class="error">${error}</small>` : null}</div>`;
      }
      if (typeof initial[name] === "number") {
        return html`<${Field} label=${t(label)} hint=${hint ? t(hint) : ""} error=${error}><input name=${name} type="number" min="0" value=${value} onInput=${(event) => setValues({ ...values, [name]: event.currentTarget.value === "" ? NaN : Number(event.currentTarget.value) })} /></${Field}>`;
      }
      return html`<${Field} label=${t(label)} hint=${hint ? t(hint) : ""} error=${error}><input name=${name} type=${name.includes("token") ? "password" : "text"} autocomplete="off" value=${value ?? ""} onInput=${(event) => setValues({ ...values, [name]: event.currentTarget.value })} /></${Field}>`;
    })}
    <div class="actions field-wide">
      <${ErrorMessage} error=${action.error} /><${DoneMessage} text=${action.done} />
      <button type="submit" class="primary" disabled=${action.busy || !Object.keys(changes).length}>${t("Save")}</button>
    </div>
  </form>`;
}

function Backup() {
  const [includeStats, setIncludeStats] = useState(false);
  const exportAction = useAction();
  const importAction = useAction();
  const [fileName, setFileName] = useState("");
  const download = () => exportAction.run(async () => {
    const response = await api("GET", `/export${query({ include_stats: includeStats ? "true" : "" })}`, undefined, { raw: true });
    const blob = await response.blob();
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = `octopus-backup-${new Date().toISOString().slice(0, 10)}.json`;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 10000);
  }, t("Backup downloaded."));
  const upload = async (event) => {
    const file = event.currentTarget.files?.[0];
    event.currentTarget.value = "";
    if (!file) return;
    setFileName(file.name);
    if (!confirmAction(t("Import {name}? Channels, groups, keys and prices in the backup replace the current ones.", { name: file.name }))) return;
    await importAction.run(async () => {
      let document;
      try { document = JSON.parse(await file.text()); } catch { throw new Error(t("The file is not valid JSON.")); }
      const result = await api("POST", "/import", document);
      return result;
    }, t("Backup imported."));
  };
  return html`<section class="card" data-testid="backup">
    <h2>${t("Backup")}</h2>
    <div class="row wrap">
      <label class="checkbox"><input type="checkbox" name="include_stats" checked=${includeStats} onChange=${(event) => setIncludeStats(event.currentTarget.checked)} /> ${t("Include statistics")}</label>
      <button type="button" data-testid="export" onClick=${download} disabled=${exportAction.busy}>${t("Export backup")}</button>
    </div>
    <${ErrorMessage} error=${exportAction.error} /><${DoneMessage} text=${exportAction.done} />
    <div class="row wrap"><label class="file-button"><span>${t("Import backup…")}</span><input type="file" accept="application/json,.json" data-testid="import" onChange=${upload} /></label>
      ${fileName ? html`<span class="muted">${fileName}</span>` : null}</div>
    <${ErrorMessage} error=${importAction.error} /><${DoneMessage} text=${importAction.done} />
  </section>`;
}

export function SettingsPage() {
  const settings = useLoad(() => api("GET", "/settings"), []);
  const version = useLoad(() => api("GET", "/version"), []);
  const [generation, setGeneration] = useState(0);
  return html`<div class="stack">
    <${LoadState} state=${settings} />
    ${settings.data ? html`<${SettingsForm} key=${generation} initial=${settings.data} onSaved=${() => { settings.reload().then(() => setGeneration(generation + 1)); }} />` : null}
    <${Backup} />
    <${PasswordChangePage} forced=${false} />
    <p class="muted" data-testid="version">${version.data ? t("octopus version {version}", { version: version.data.version }) : version.error ? version.error.message : ""}</p>
  </div>`;
}
