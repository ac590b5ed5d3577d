// The groups page: routing mode, ordered channel/model items with weights, timeouts, a bulk "add matching models" helper and a try-it box.
import { html, useState } from "../lib.js";
import { api } from "../api.js";
import { t } from "../i18n.js";
import { useLoad, useAction, LoadState, ErrorMessage, Field, Badge, confirmAction, formatMilliseconds } from "../components.js";

const MODES = ["round_robin", "random", "failover", "weighted"];
/** Readable names for the API's mode identifiers. */
const MODE_LABELS = { round_robin: "Round robin", random: "Random", failover: "Failover", weighted: "Weighted" };

/** Reads an optional whole number from an input; empty means "use the gateway default" and is sent as null. */
function optionalNumber(text) {
  return text === "" || text === null || text === undefined ? null : Number(text);
}

function GroupForm({ initial, channels, onSaved, onCancel }) {
  const [form, setForm] = useState(initial);
  const [problems, setProblems] = useState({});
  const [pattern, setPattern] = useState("");
  const [helperMessage, setHelperMessage] = useState(null);
  const save = useAction();
  const update = (changes) => setForm((previous) => ({ ...previous, ...changes }));
  const updateItem = (index, changes) => update({ items: form.items.map((item, position) => (position === index ? { ...item, ...changes } : item)) });
  const moveItem = (index, offset) => {
    const items = [...form.items];
    const target = index + offset;
    if (target < 0 || target >= items.length) return;
    [items[index], items[target]] = [items[target], items[index]];
    update({ items });
  };
  const channelById = (id) => channels.find((channel) => channel.id === Number(id));

  /** Adds every channel model whose name contains the text, or matches it when it is written as /regex/. */
  const addMatching = () => {
    let matches;
    const regexMatch = pattern.match(/^\/(.*)\/([a-z]*)$/);
    try {
      const expression = regexMatch ? new RegExp(regexMatch[1], regexMatch[2]) : null;
      matches = (model) => (expression ? expression.test(model) : model.toLowerCase().includes(pattern.toLowerCase()));
    } catch {
      setHelperMessage(t("Not a valid regular expression."));
      return;
    }
    const existing = new Set(form.items.map((item) => `${item.channel_id}/${item.model}`));
    const added = [];
    for (const channel of channels) {
      for (const model of channel.models || []) {
        if (pattern && matches(model) && !existing.has(`${channel.id}/${model}`)) added.push({ channel_id: channel.id, model, weight: 1 });
      }
    }
    update({ items: [...form.items, ...added] });
    setHelperMessage(t("{count} items added.", { count: added.length }));
  };

  const submit = async (event) => {
    event.preventDefault();
    const found = {};
    if (!form.name.trim()) found.name = t("A name is required.");
    if (form.items.some((item) => !item.channel_id || !item.model)) found.items = t("Every item needs a channel and a model.");
    if (form.items.some((item) => !(Number(item.weight) >= 1))) found.items = t("Weights are whole numbers of at least 1.");
    // match_regex is checked by the gateway, whose pattern syntax (regex-lite: inline flags such
    // as (?i), no Unicode classes) is not JavaScript's; its refusal is shown by the Save button.
    setProblems(found);
    if (Object.keys(found).length) return;
    const body = {
      name: form.name.trim(), mode: form.mode,
      // The position is the priority, so failover tries the items top to bottom.
      items: form.items.map((item, position) => ({ channel_id: Number(item.channel_id), model: item.model, priority: position, weight: Number(item.weight) || 1 })),
      max_attempts: optionalNumber(form.max_attempts), first_byte_timeout_ms: optionalNumber(form.first_byte_timeout_ms),
      total_timeout_ms: optionalNumber(form.total_timeout_ms), sticky_seconds: optionalNumber(form.sticky_seconds) ?? 0,
      match_regex: (form.match_regex || "").trim(),
    };
    const saved = await save.run(() => (form.id ? api("PUT", `/groups/${form.id}`, body) : api("POST", "/groups", body)));
    if (saved) onSaved(saved);
  };

  const numberField = (name, label, hint) => html`<${Field} label=${label} hint=${hint}><input name=${name} type="number" min="0" inputmode="numeric" value=${form[name] ?? ""} onInput=${(event) => update({ [name]: event.currentTarget.value })} /></${Field}>`;
  return html`<form class="card form-grid" onSubmit=${submit} data-testid="group-form" novalidate>
    <h2 class="field-wide">${form.id ? t("Edit group {name}", { name: initial.name }) : t("New group")}</h2>
    <${Field} label=${t("Name")} hint=${t("Clients ask for this name as the model.")} error=${problems.name}><input name="name" value=${form.name} onInput=${(event) => update({ name: event.currentTarget.value })} /></${Field}>
    <${Field} label=${t("Mode")}><select name="mode" value=${form.mode} onChange=${(event) => update({ mode: event.currentTarget.value })}>${MODES.map((mode) => html`<option value=${mode}>${t(MODE_LABELS[mode])}</option>`)}</select></${Field}>
    ${numberField("sticky_seconds", t("Sticky seconds"), t("0 = off"))}
    <${Field} label=${t("Auto-group regex")} hint=${t("New models of channels with auto group \"regex\" that match join this group.")} error=${problems.match_regex}><input name="match_regex" value=${form.match_regex || ""} onInput=${(event) => update({ match_regex: event.currentTarget.value })} /></${Field}>
    ${numberField("max_attempts", t("Max attempts"), t("empty = gateway default"))}
    ${numberField("first_byte_timeout_ms", t("First byte timeout (ms)"), t("empty = gateway default"))}
    ${numberField("total_timeout_ms", t("Total timeout (ms)"), t("empty = gateway default"))}
    <fieldset class="field-wide" data-testid="group-items"><legend>${t("Items")} (${form.items.length})</legend>
      ${form.items.map((item, index) => html`<div class="row item-row">
        <span class="muted position">${index + 1}.</span>
        <select aria-label=${t("Channel of item {number}", { number: index + 1 })} name="item_channel" value=${item.channel_id || ""} onChange=${(event) => updateItem(index, { channel_id: Number(event.currentTarget.value), model: "" })}>
          <option value="">${t("Channel…")}</option>${channels.map((channel) => html`<option value=${channel.id}>${channel.name}</option>`)}</select>
        <select aria-label=${t("Model of item {number}", { number: index + 1 })} name="item_model" value=${item.model} onChange=${(event) => updateItem(index, { model: event.currentTarget.value })}>
          <option value="">${t("Model…")}</option>${[...new Set([...(channelById(item.channel_id)?.models || []), ...(item.model ? [item.model] : [])])].map((model) => html`<option value=${model}>${model}</option>`)}</select>
        ${form.mode === "weighted" ? html`<input aria-label=${t("Weight of item {number}", { number: index + 1 })} class="tiny" type="number" min="1" value=${item.weight} onInput=${(event) => updateItem(index, { weight: event.currentTarget.value })} />` : null}
        <button type="button" class="ghost" aria-label=${t("Move up")} onClick=${() => moveItem(index, -1)} disabled=${index === 0}>↑</button>
        <button type="button" class="ghost" aria-label=${t("Move down")} onClick=${() => moveItem(index, 1)} disabled=${index === form.items.length - 1}>↓</button>
        <button type="button" class="ghost" aria-label=${t("Remove")} onClick=${() => update({ items: form.items.filter((_, position) => position !== index) })}>✕</button>
      </div>`)}
      ${problems.items ? html`<small class="error" role="alert">${problems.items}</small>` : null}
      <div class="row"><button type="button" onClick=${() => update({ items: [...form.items, { channel_id: channels[0]?.id || "", model: "", weight: 1 }] })}>+ ${t("Add item")}</button></div>
      <div class="row">
        <input aria-label=${t("Models matching (text or /regex/)")} name="match_pattern" placeholder=${t("Models matching (text or /regex/)")} value=${pattern} onInput=${(event) => setPattern(event.currentTarget.value)} />
        <button type="button" data-testid="add-matching" onClick=${addMatching}>${t("Add all matching")}</button>
      </div>
      ${helperMessage ? html`<small class="muted" role="status">${helperMessage}</small>` : null}
    </fieldset>
    <div class="actions field-wide">
      <${ErrorMessage} error=${save.error} />
      <button type="submit" class="primary" disabled=${save.busy}>${t("Save")}</button>
      <button type="button" onClick=${onCancel}>${t("Cancel")}</button>
    </div>
  </form>`;
}

function TryIt({ group }) {
  const [prompt, setPrompt] = useState("Say hello.");
  const [result, setResult] = useState(null);
  const action = useAction();
  const send = async (event) => {
    event.preventDefault();
    setResult(null);
    const answer = await action.run(() => api("POST", `/groups/${group.id}/test`, { prompt }));
    if (answer) setResult(answer);
  };
  return html`<form class="try-it row" onSubmit=${send}>
    <input aria-label=${t("Prompt for {name}", { name: group.name })} value=${prompt} onInput=${(event) => setPrompt(event.currentTarget.value)} />
    <button type="submit" disabled=${action.busy || !prompt.trim()}>${t("Try it")}</button>
    <${ErrorMessage} error=${action.error} />
    ${result ? html`<p class=${result.ok ? "done" : "error"} data-testid="group-test-result">${result.ok ? "✓" : "✗"} ${result.status} · ${formatMilliseconds(result.latency_ms)} · ${result.channel_name || "–"} / ${result.model || "–"}: ${result.ok ? result.text : result.error}</p>` : null}
  </form>`;
}

export function GroupsPage() {
  const groups = useLoad(() => api("GET", "/groups"), []);
  const channels = useLoad(() => api("GET", "/channels"), []);
  const [editing, setEditing] = useState(null);
  const rowAction = useAction();
  const list = Array.isArray(groups.data) ? groups.data : groups.data?.items || [];
  const channelList = Array.isArray(channels.data) ? channels.data : channels.data?.items || [];
  const channelName = (id) => channelList.find((channel) => channel.id === id)?.name || `#${id}`;
  const remove = (group) => { if (confirmAction(t("Delete group {name}?", { name: group.name }))) rowAction.run(async () => { await api("DELETE", `/groups/${group.id}`); await groups.reload(); }); };
  const startEditing = (group) => setEditing(group
    ? { ...group, items: [...(group.items || [])].sort((left, right) => left.priority - right.priority).map((item) => ({ ...item, weight: item.weight || 1 })) }
    : { name: "", mode: "round_robin", items: [], sticky_seconds: 0, max_attempts: null, first_byte_timeout_ms: null, total_timeout_ms: null, match_regex: "" });

  if (editing) return html`<${GroupForm} initial=${editing} channels=${channelList} onCancel=${() => setEditing(null)} onSaved=${() => { setEditing(null); groups.reload(); }} />`;
  return html`<div class="stack">
    <div class="toolbar"><button type="button" class="primary" data-testid="new-group" onClick=${() => startEditing(null)}>+ ${t("New group")}</button></div>
    <${ErrorMessage} error=${rowAction.error} />
    <${ErrorMessage} error=${channels.error} />
    <${LoadState} state=${groups} />
    ${list.map((group) => html`<section class="panel" data-testid="group-card">
      <div class="panel-head"><h2>${group.name} <${Badge}>${t(MODE_LABELS[group.mode] || group.mode)}</${Badge}></h2>
        <div><button type="button" onClick=${() => startEditing(group)}>${t("Edit")}</button> <button type="button" class="danger" onClick=${() => remove(group)}>${t("Delete")}</button></div></div>
      <p class="muted">${(group.items || []).map((item) => `${channelName(item.channel_id)} / ${item.model}${group.mode === "weighted" ? ` ×${item.weight}` : ""}`).join(" → ") || t("No items.")}</p>
      <${TryIt} group=${group} />
    </section>`)}
    ${groups.data && !list.length ? html`<p class="muted">${t("No groups yet.")}</p>` : null}
  </div>`;
}
