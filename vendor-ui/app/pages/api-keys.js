// The client keys page: create keys (the secret is shown once), enable, expiry, spending cap, allowed groups and usage.
import { html, useState } from "../lib.js";
import { api } from "../api.js";
import { t } from "../i18n.js";
import { useLoad, useAction, LoadState, ErrorMessage, Field, Toggle, confirmAction, copyText, formatNumber, formatCost, formatTime } from "../components.js";

/** Unix seconds to the value a datetime-local input shows, in the browser's time zone. */
function secondsToLocalInput(seconds) {
  if (!seconds) return "";
  const date = new Date(seconds * 1000);
  return new Date(date.getTime() - date.getTimezoneOffset() * 60000).toISOString().slice(0, 16);
}

function ApiKeyForm({ initial, groups, onSaved, onCancel }) {
  const [form, setForm] = useState({ ...initial, expires_input: secondsToLocalInput(initial.expires_at), max_cost_input: initial.max_cost ?? "" });
  const [problems, setProblems] = useState({});
  const save = useAction();
  const update = (changes) => setForm((previous) => ({ ...previous, ...changes }));
  const toggleModel = (name, allowed) => update({ allowed_models: allowed ? [...form.allowed_models, name] : form.allowed_models.filter((other) => other !== name) });
  const submit = async (event) => {
    event.preventDefault();
    const found = {};
    if (!form.name.trim()) found.name = t("A name is required.");
    if (form.max_cost_input !== "" && !(Number(form.max_cost_input) >= 0)) found.max_cost = t("Enter an amount of 0 or more, or leave it empty.");
    setProblems(found);
    if (Object.keys(found).length) return;
    const body = {
      name: form.name.trim(), enabled: form.enabled,
      expires_at: form.expires_input ? Math.floor(new Date(form.expires_input).getTime() / 1000) : null,
      max_cost: form.max_cost_input === "" ? null : Number(form.max_cost_input),
      allowed_models: form.allowed_models,
    };
    const saved = await save.run(() => (form.id ? api("PUT", `/api-keys/${form.id}`, body) : api("POST", "/api-keys", body)));
    if (saved) onSaved(saved);
  };
  return html`<form class="card form-grid" onSubmit=${submit} data-testid="api-key-form" novalidate>
    <h2 class="field-wide">${form.id ? t("Edit client key {name}", { name: initial.name }) : t("New client key")}</h2>
    <${Field} label=${t("Name")} error=${problems.name}><input name="name" value=${form.name} onInput=${(event) => update({ name: event.currentTarget.value })} /></${Field}>
    <div class="field"><span class="field-label">${t("Enabled")}</span><${Toggle} label=${t("Enabled")} checked=${form.enabled} onChange=${(enabled) => update({ enabled })} /></div>
    <${Field} label=${t("Expires at")} hint=${t("empty = never")}><input name="expires_at" type="datetime-local" value=${form.expires_input} onInput=${(event) => update({ expires_input: event.currentTarget.value })} /></${Field}>
    <${Field} label=${t("Spending cap (USD)")} hint=${t("empty = no cap")} error=${problems.max_cost}><input name="max_cost" type="number" min="0" step="0.01" value=${form.max_cost_input} onInput=${(event) => update({ max_cost_input: event.currentTarget.value })} /></${Field}>
    <fieldset class="field-wide"><legend>${t("Allowed groups")} <small class="muted">${t("none selected = all groups")}</small></legend>
      <div class="chips">${groups.map((group) => html`<label class="chip"><input type="checkbox" checked=${form.allowed_models.includes(group.name)} onChange=${(event) => toggleModel(group.name, event.currentTarget.checked)} /> ${group.name}</label>`)}</div>
    </fieldset>
    <div class="actions field-wide">
      <${ErrorMessage} error=${save.error} />
      <button type="submit" class="primary" disabled=${save.busy}>${t("Save")}</button>
      <button type="button" onClick=${onCancel}>${t("Cancel")}</button>
    </div>
  </form>`;
}

/** The new key's secret; the API returns it only in the create response, so this is the one chance to copy it. */
function NewSecret({ secret, onClose }) {
  const [copied, setCopied] = useState(null);
  return html`<section class="card highlight" role="alert" data-testid="new-key">
    <h2>${t("Copy the new key now")}</h2>
    <p>${t("It is shown only once; octopus stores only a hash of it.")}</p>
    <div class="row"><code class="secret" data-testid="new-key-value">${secret}</code>
      <button type="button" onClick=${async () => setCopied(await copyText(secret))}>${t("Copy")}</button></div>
    ${copied === true ? html`<small class="done">${t("Copied.")}</small>` : copied === false ? html`<small class="error">${t("Copying failed; select the key and copy it by hand.")}</small>` : null}
    <button type="button" onClick=${onClose}>${t("Done")}</button>
  </section>`;
}

export function ApiKeysPage() {
  const keys = useLoad(() => api("GET", "/api-keys"), []);
  const groups = useLoad(() => api("GET", "/groups"), []);
  const usage = useLoad(() => api("GET", "/stats/api-keys"), []);
  const [editing, setEditing] = useState(null);
  const [secret, setSecret] = useState(null);
  const rowAction = useAction();
  const list = Array.isArray(keys.data) ? keys.data : keys.data?.items || [];
  const groupList = Array.isArray(groups.data) ? groups.data : groups.data?.items || [];
  const usageById = Object.fromEntries((usage.data?.items || []).map((row) => [row.api_key_id, row]));
  const setEnabled = (key, enabled) => rowAction.run(async () => { await api("PUT", `/api-keys/${key.id}`, { enabled }); await keys.reload(); });
  const remove = (key) => { if (confirmAction(t("Delete client key {name}?", { name: key.name }))) rowAction.run(async () => { await api("DELETE", `/api-keys/${key.id}`); await keys.reload(); }); };

  if (editing) {
    return html`<${ApiKeyForm} initial=${editing} groups=${groupList} onCancel=${() => setEditing(null)}
      onSaved=${(saved) => { setEditing(null); if (saved.key) setSecret(saved.key); keys.reload(); }} />`;
  }
  return html`<div class="stack">
    ${secret ? html`<${NewSecret} secret=${secret} onClose=${() => setSecret(null)} />` : null}
    <div class="toolbar"><button type="button" class="primary" data-testid="new-key-button" onClick=${() => setEditing({ name: "", enabled: true, expires_at: null, max_cost: null, allowed_models: [] })}>+ ${t("New client key")}</button></div>
    <${ErrorMessage} error=${rowAction.error} />
    <${LoadState} state=${keys} />
    <div class="table-scroll"><table class="responsive" data-testid="api-key-table">
      <thead><tr><th>${t("Name")}</th><th>${t("Key")}</th><th>${t("Enabled")}</th><th>${t("Expires at")}</th><th class="number">${t("Spending cap")}</th><th>${t("Allowed groups")}</th><th class="number">${t("Requests")}</th><th class="number">${t("Cost")}</th><th>${t("Actions")}</th></tr></thead>
      <tbody>${list.map((key) => {
        const row = usageById[key.id] || {};
        return html`<tr>
          <td data-label=${t("Name")}><strong>${key.name}</strong></td>
          <td data-label=${t("Key")}><code>${key.key_prefix ? `${key.key_prefix}…` : "–"}</code></td>
          <td data-label=${t("Enabled")}><${Toggle} label=${t("Enable {name}", { name: key.name })} checked=${key.enabled} onChange=${(enabled) => setEnabled(key, enabled)} /></td>
          <td data-label=${t("Expires at")}>${key.expires_at ? formatTime(key.expires_at) : t("never")}</td>
          <td data-label=${t("Spending cap")} class="number">${key.max_cost === null || key.max_cost === undefined ? t("none") : formatCost(key.max_cost)}</td>
          <td data-label=${t("Allowed groups")}>${key.allowed_models?.length ? key.allowed_models.join(", ") : t("all")}</td>
          <td data-label=${t("Requests")} class="number">${formatNumber(row.requests || 0)}</td>
          <td data-label=${t("Cost")} class="number">${formatCost(row.cost || 0)}</td>
          <td data-label=${t("Actions")} class="actions-cell"><button type="button" onClick=${() => setEditing({ ...key, allowed_models: key.allowed_models || [] })}>${t("Edit")}</button> <button type="button" class="danger" onClick=${() => remove(key)}>${t("Delete")}</button></td>
        </tr>`;
      })}
      ${keys.data && !list.length ? html`<tr><td colspan="9" class="muted">${t("No client keys yet.")}</td></tr>` : null}</tbody>
    </table></div>
  </div>`;
}
