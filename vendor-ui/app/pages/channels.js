// The channels page: the list with per-channel numbers and toggles, and the create/edit form with keys, base URLs, headers and models.
import { html, useState } from "../lib.js";
import { api } from "../api.js";
import { t } from "../i18n.js";
import { useLoad, useAction, LoadState, ErrorMessage, DoneMessage, Field, Toggle, Badge, confirmAction, formatNumber, formatPercent, formatMilliseconds, formatCost } from "../components.js";

const AUTO_GROUP_MODES = ["none", "exact", "fuzzy", "regex"];

function emptyChannel(channelTypes) {
  const firstType = channelTypes?.[0];
  return {
    name: "", type: firstType?.type || "openai_chat", enabled: true,
    base_urls: [firstType?.default_base_url || ""], key_rows: [{ key: "", enabled: true, remark: "" }],
    header_rows: [], models: [], proxy: "", auto_sync: false, match_regex: "", auto_group: "none",
  };
}

/** Turns a channel from the API into form state: keys and headers become editable rows. */
function channelToForm(channel) {
  return {
    ...channel,
    base_urls: channel.base_urls?.length ? [...channel.base_urls] : [""],
    key_rows: (channel.key_info || []).map((info) => ({ id: info.id, key: info.key, enabled: info.enabled, remark: info.remark || "" })),
    header_rows: Object.entries(channel.headers || {}).map(([name, value]) => ({ name, value })),
    original_proxy: channel.proxy || "",
  };
}

/** Builds the request body. Stored keys are sent with their id and masked text, which tells the API to keep the secret. */
function formToBody(form) {
  const body = {
    name: form.name.trim(), type: form.type, enabled: form.enabled,
    base_urls: form.base_urls.map((url) => url.trim()).filter(Boolean),
    keys: form.key_rows.filter((row) => row.id || row.key.trim()).map((row) => (row.id
      ? { id: row.id, key: row.key, enabled: row.enabled, remark: row.remark }
      : { key: row.key.trim(), enabled: row.enabled, remark: row.remark })),
    headers: Object.fromEntries(form.header_rows.filter((row) => row.name.trim()).map((row) => [row.name.trim(), row.value])),
    models: form.models, auto_sync: form.auto_sync, match_regex: form.match_regex,
  };
  // The API shows a proxy with its password hidden; sending that text back unchanged would overwrite the real one.
  if (!form.id || form.proxy !== form.original_proxy) body.proxy = form.proxy.trim();
  // auto_group is only sent to a backend that reports it, so an older backend does not reject the unknown field.
  if ("auto_group" in form && (form.id === undefined ? form.auto_group !== "none" : true) && form.has_auto_group) body.auto_group = form.auto_group;
  return body;
}

function validate(form) {
  const problems = {};
  if (!form.name.trim()) problems.name = t("A name is required.");
  if (!form.base_urls.some((url) => url.trim())) problems.base_urls = t("At least one base URL is required.");
  else if (form.base_urls.some((url) => url.trim() && !/^https?:\/\//.test(url.trim()))) problems.base_urls = t("Base URLs start with http:// or https://.");
  // match_regex is checked by the gateway, whose pattern syntax (regex-lite: inline flags such as
  // (?i), no Unicode classes) is not JavaScript's; its refusal is shown by the Save button.
  return problems;
}

function ChannelForm({ initial, channelTypes, onSaved, onCancel }) {
  const [form, setForm] = useState(initial);
  const [problems, setProblems] = useState({});
  const [newModel, setNewModel] = useState("");
  const [testModel, setTestModel] = useState(initial.models?.[0] || "");
  const save = useAction();
  const fetchModels = useAction();
  const test = useAction();
  const [testResult, setTestResult] = useState(null);
  const update = (changes) => setForm((previous) => ({ ...previous, ...changes }));
  const updateRow = (listName, index, changes) => update({ [listName]: form[listName].map((row, position) => (position === index ? (typeof row === "object" ? { ...row, ...changes } : changes) : row)) });
  const removeRow = (listName, index) => update({ [listName]: form[listName].filter((_, position) => position !== index) });
  const selectedType = channelTypes.find((type) => type.type === form.type);

  const submit = async (event) => {
    event.preventDefault();
    const found = validate(form);
    setProblems(found);
    if (Object.keys(found).length) return;
    const saved = await save.run(() => (form.id ? api("PUT", `/channels/${form.id}`, formToBody(form)) : api("POST", "/channels", formToBody(form))));
    if (saved) onSaved(saved);
  };
  const loadUpstreamModels = async () => {
    const result = await fetchModels.run(() => (form.id
      ? api("POST", `/channels/${form.id}/sync-models`)
      : api("POST", "/channels/fetch-models", formToBody(form))));
    if (result) {
      const models = result.models || [];
      update({ models: [...new Set([...form.models, ...models])] });
      if (!testModel && models.length) setTestModel(models[0]);
    }
  };
  const runTest = async () => {
    setTestResult(null);
    const result = await test.run(() => api("POST", `/channels/${form.id}/test`, { model: testModel }));
    if (result) setTestResult(result);
  };

  return html`<form class="card form-grid" onSubmit=${submit} data-testid="channel-form" novalidate>
    <h2 class="field-wide">${form.id ? t("Edit channel {name}", { name: initial.name }) : t("New channel")}</h2>
    <${Field} label=${t("Name")} error=${problems.name}><input name="name" value=${form.name} onInput=${(event) => update({ name: event.currentTarget.value })} /></${Field}>
    <${Field} label=${t("Type")} hint=${selectedType ? `${selectedType.path}` : ""}>
      <select name="type" value=${form.type} onChange=${(event) => {
        const type = channelTypes.find((candidate) => candidate.type === event.currentTarget.value);
        const onlyDefaultUrl = form.base_urls.length === 1 && (!form.base_urls[0] || channelTypes.some((candidate) => candidate.default_base_url === form.base_urls[0]));
        update({ type: event.currentTarget.value, base_urls: onlyDefaultUrl && type?.default_base_url ? [type.default_base_url] : form.base_urls });
      }}>${channelTypes.map((type) => html`<option value=${type.type}>${type.name}</option>`)}</select></${Field}>
    <div class="field"><span class="field-label">${t("Enabled")}</span><${Toggle} label=${t("Enabled")} checked=${form.enabled} onChange=${(enabled) => update({ enabled })} /></div>

    <fieldset class="field-wide"><legend>${t("Base URLs")}</legend>
      ${form.base_urls.map((url, index) => html`<div class="row">
        <input aria-label=${t("Base URL {number}", { number: index + 1 })} name="base_url" value=${url} placeholder=${selectedType?.default_base_url || "https://"} onInput=${(event) => updateRow("base_urls", index, event.currentTarget.value)} />
        <button type="button" class="ghost" aria-label=${t("Remove")} onClick=${() => removeRow("base_urls", index)} disabled=${form.base_urls.length === 1}>✕</button></div>`)}
      ${problems.base_urls ? html`<small class="error" role="alert">${problems.base_urls}</small>` : null}
      <button type="button" onClick=${() => update({ base_urls: [...form.base_urls, ""] })}>+ ${t("Add base URL")}</button>
    </fieldset>

    <fieldset class="field-wide"><legend>${t("Keys")}</legend>
      ${form.key_rows.map((row, index) => html`<div class="row">
        <input aria-label=${t("Key {number}", { number: index + 1 })} name="key" value=${row.key} readonly=${Boolean(row.id)} placeholder="sk-…" autocomplete="off" onInput=${(event) => updateRow("key_rows", index, { key: event.currentTarget.value })} />
        <input aria-label=${t("Remark for key {number}", { number: index + 1 })} class="short" value=${row.remark} placeholder=${t("Remark")} onInput=${(event) => updateRow("key_rows", index, { remark: event.currentTarget.value })} />
        <${Toggle} label=${t("Key {number} enabled", { number: index + 1 })} checked=${row.enabled} onChange=${(enabled) => updateRow("key_rows", index, { enabled })} />
        <button type="button" class="ghost" aria-label=${t("Remove")} onClick=${() => removeRow("key_rows", index)}>✕</button></div>`)}
      <button type="button" onClick=${() => update({ key_rows: [...form.key_rows, { key: "", enabled: true, remark: "" }] })}>+ ${t("Add key")}</button>
    </fieldset>

    <fieldset class="field-wide"><legend>${t("Custom headers")}</legend>
      ${form.header_rows.map((row, index) => html`<div class="row">
        <input aria-label=${t("Header name")} class="short" value=${row.name} placeholder=${t("Header name")} onInput=${(event) => updateRow("header_rows", index, { name: event.currentTarget.value })} />
        <input aria-label=${t("Header value")} value=${row.value} placeholder=${t("Header value")} onInput=${(event) => updateRow("header_rows", index, { value: event.currentTarget.value })} />
        <button type="button" class="ghost" aria-label=${t("Remove")} onClick=${() => removeRow("header_rows", index)}>✕</button></div>`)}
      <button type="button" onClick=${() => update({ header_rows: [...form.header_rows, { name: "", value: "" }] })}>+ ${t("Add header")}</button>
    </fieldset>

    <fieldset class="field-wide" data-testid="channel-models"><legend>${t("Models")} (${form.models.length})</legend>
      <div class="chips">${form.models.map((model) => html`<span class="chip">${model}<button type="button" class="ghost" aria-label=${t("Remove {model}", { model })} onClick=${() => update({ models: form.models.filter((other) => other !== model) })}>✕</button></span>`)}</div>
      <div class="row">
        <input aria-label=${t("Add a model")} value=${newModel} placeholder=${t("model name")} onInput=${(event) => setNewModel(event.currentTarget.value)}
          onKeyDown=${(event) => { if (event.key === "Enter") { event.preventDefault(); if (newModel.trim()) { update({ models: [...new Set([...form.models, newModel.trim()])] }); setNewModel(""); } } }} />
        <button type="button" onClick=${() => { if (newModel.trim()) { update({ models: [...new Set([...form.models, newModel.trim()])] }); setNewModel(""); } }}>${t("Add")}</button>
        <button type="button" data-testid="fetch-models" onClick=${loadUpstreamModels} disabled=${fetchModels.busy}>${t("Fetch models from upstream")}</button>
      </div>
      <${ErrorMessage} error=${fetchModels.error} />
    </fieldset>

    <${Field} label=${t("Proxy")} hint=${t("http://, https:// or socks5:// URL; empty = direct")}><input name="proxy" value=${form.proxy} onInput=${(event) => update({ proxy: event.currentTarget.value })} /></${Field}>
    <${Field} label=${t("Model filter (regex)")} error=${problems.match_regex}><input name="match_regex" value=${form.match_regex} onInput=${(event) => update({ match_regex: event.currentTarget.value })} /></${Field}>
    ${form.has_auto_group ? html`<${Field} label=${t("Auto group")}><select name="auto_group" value=${form.auto_group} onChange=${(event) => update({ auto_group: event.currentTarget.value })}>${AUTO_GROUP_MODES.map((mode) => html`<option value=${mode}>${t(mode)}</option>`)}</select></${Field}>` : null}
    <div class="field"><span class="field-label">${t("Sync models automatically")}</span><${Toggle} label=${t("Sync models automatically")} checked=${form.auto_sync} onChange=${(auto_sync) => update({ auto_sync })} /></div>

    ${form.id ? html`<fieldset class="field-wide"><legend>${t("Test")}</legend><div class="row">
      <select aria-label=${t("Model to test")} value=${testModel} onChange=${(event) => setTestModel(event.currentTarget.value)}>${form.models.map((model) => html`<option value=${model}>${model}</option>`)}</select>
      <button type="button" onClick=${runTest} disabled=${test.busy || !testModel}>${t("Test")}</button></div>
      <${ErrorMessage} error=${test.error} />
      ${testResult ? html`<p class=${testResult.ok ? "done" : "error"} data-testid="channel-test-result">${testResult.ok ? "✓" : "✗"} ${testResult.status} · ${formatMilliseconds(testResult.latency_ms)} ${testResult.message || ""}</p>` : null}
    </fieldset>` : null}

    <div class="actions field-wide">
      <${ErrorMessage} error=${save.error} />
      <button type="submit" class="primary" disabled=${save.busy}>${t("Save")}</button>
      <button type="button" onClick=${onCancel}>${t("Cancel")}</button>
    </div>
  </form>`;
}

export function ChannelsPage() {
  const channels = useLoad(() => api("GET", "/channels"), []);
  const channelTypes = useLoad(() => api("GET", "/channel-types"), []);
  const numbers = useLoad(() => api("GET", "/stats/channels"), []);
  const [editing, setEditing] = useState(null);
  const rowAction = useAction();
  const list = Array.isArray(channels.data) ? channels.data : channels.data?.items || [];
  const types = channelTypes.data || [];
  const numbersById = Object.fromEntries((numbers.data?.items || []).map((row) => [row.channel_id, row]));
  const typeName = (type) => types.find((candidate) => candidate.type === type)?.name || type;

  const setEnabled = (channel, enabled) => rowAction.run(async () => { await api("PUT", `/channels/${channel.id}`, { enabled }); await channels.reload(); });
  const remove = (channel) => { if (confirmAction(t("Delete channel {name}?", { name: channel.name }))) rowAction.run(async () => { await api("DELETE", `/channels/${channel.id}`); await channels.reload(); }); };
  const startEditing = (channel) => setEditing(channel ? { ...channelToForm(channel), has_auto_group: "auto_group" in channel } : { ...emptyChannel(types), has_auto_group: true });

  if (editing) {
    return html`<${ChannelForm} initial=${editing} channelTypes=${types} onCancel=${() => setEditing(null)} onSaved=${() => { setEditing(null); channels.reload(); }} />`;
  }
  return html`<div class="stack">
    <div class="toolbar"><button type="button" class="primary" data-testid="new-channel" onClick=${() => startEditing(null)} disabled=${!channelTypes.data}>+ ${t("New channel")}</button></div>
    <${ErrorMessage} error=${channelTypes.error} />
    <${ErrorMessage} error=${rowAction.error} />
    <${LoadState} state=${channels} />
    <div class="table-scroll"><table class="responsive" data-testid="channel-table">
      <thead><tr><th>${t("Name")}</th><th>${t("Type")}</th><th>${t("Enabled")}</th><th class="number">${t("Keys")}</th><th class="number">${t("Models")}</th><th class="number">${t("Requests")}</th><th class="number">${t("Success rate")}</th><th class="number">${t("Avg latency")}</th><th class="number">${t("Cost")}</th><th>${t("Actions")}</th></tr></thead>
      <tbody>${list.map((channel) => {
        const row = numbersById[channel.id] || {};
        return html`<tr>
          <td data-label=${t("Name")}><strong>${channel.name}</strong>${(channel.endpoints || []).map((endpoint) => html` <${Badge}>${endpoint.delay_ms ?? "–"} ms</${Badge}>`)}</td>
          <td data-label=${t("Type")}>${typeName(channel.type)}</td>
          <td data-label=${t("Enabled")}><${Toggle} label=${t("Enable {name}", { name: channel.name })} checked=${channel.enabled} onChange=${(enabled) => setEnabled(channel, enabled)} /></td>
          <td data-label=${t("Keys")} class="number">${(channel.key_info || channel.keys || []).length}</td>
          <td data-label=${t("Models")} class="number">${(channel.models || []).length}</td>
          <td data-label=${t("Requests")} class="number">${formatNumber(row.requests || 0)}</td>
          <td data-label=${t("Success rate")} class="number">${formatPercent(row.success, row.requests)}</td>
          <td data-label=${t("Avg latency")} class="number">${formatMilliseconds(row.avg_latency_ms)}</td>
          <td data-label=${t("Cost")} class="number">${formatCost(row.cost || 0)}</td>
          <td data-label=${t("Actions")} class="actions-cell"><button type="button" onClick=${() => startEditing(channel)}>${t("Edit")}</button> <button type="button" class="danger" onClick=${() => remove(channel)}>${t("Delete")}</button></td>
        </tr>`;
      })}
      ${channels.data && !list.length ? html`<tr><td colspan="10" class="muted">${t("No channels yet.")}</td></tr>` : null}</tbody>
    </table></div>
  </div>`;
}
