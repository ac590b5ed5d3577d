// The prices page: default and per-channel prices per million tokens, inline editing, and the models.dev sync.
import { html, useState } from "../lib.js";
import { api, query } from "../api.js";
import { t } from "../i18n.js";
import { useLoad, useAction, LoadState, ErrorMessage, DoneMessage, Badge, confirmAction, formatTime } from "../components.js";

const PRICE_FIELDS = ["input", "output", "cache_read", "cache_write"];
const PRICE_LABELS = { input: "Input", output: "Output", cache_read: "Cache read", cache_write: "Cache write" };
const SOURCE_BADGES = { channel: "accent", default: "neutral", "models.dev": "good", unpriced: "warn" };

/** One editable price row; a row without an id is created on save, a row with one is updated. */
function PriceRow({ row, channelId, onChanged }) {
  const [values, setValues] = useState(Object.fromEntries(PRICE_FIELDS.map((field) => [field, row[field] ?? ""])));
  const [problem, setProblem] = useState(null);
  const action = useAction();
  const changed = PRICE_FIELDS.some((field) => String(values[field]) !== String(row[field] ?? ""));
  const save = async () => {
    if (PRICE_FIELDS.some((field) => values[field] === "" || !(Number(values[field]) >= 0))) return setProblem(t("Prices are numbers of 0 or more."));
    setProblem(null);
    const numbers = Object.fromEntries(PRICE_FIELDS.map((field) => [field, Number(values[field])]));
    const saved = await action.run(() => (row.id === null || row.id === undefined
      ? api("POST", "/prices", { model: row.model, channel_id: channelId, ...numbers })
      : api("PUT", `/prices/${row.id}`, numbers)));
    if (saved !== undefined) onChanged();
  };
  const remove = async () => {
    if (!confirmAction(t("Delete the price of {model}?", { model: row.model }))) return;
    const removed = await action.run(() => api("DELETE", `/prices/${row.id}`));
    if (removed !== undefined) onChanged();
  };
  return html`<tr data-model=${row.model}>
    <td data-label=${t("Model")}><strong>${row.model}</strong> <${Badge} kind=${SOURCE_BADGES[row.source] || "neutral"}>${t(row.source || "unpriced")}</${Badge}></td>
    ${PRICE_FIELDS.map((field) => html`<td data-label=${t(PRICE_LABELS[field])}><input class="price-input" type="number" min="0" step="any" inputmode="decimal" name=${field}
      aria-label=${t("{field} price of {model}", { field: t(PRICE_LABELS[field]), model: row.model })} value=${values[field]}
      onInput=${(event) => setValues({ ...values, [field]: event.currentTarget.value })} onKeyDown=${(event) => { if (event.key === "Enter") save(); }} /></td>`)}
    <td data-label=${t("Actions")} class="actions-cell">
      <button type="button" class="primary" onClick=${save} disabled=${!changed || action.busy}>${t("Save")}</button>
      ${row.id !== null && row.id !== undefined ? html` <button type="button" class="danger" onClick=${remove} disabled=${action.busy}>${t("Delete")}</button>` : null}
      ${problem ? html`<small class="error" role="alert">${problem}</small>` : null}
      <${ErrorMessage} error=${action.error} />
    </td>
  </tr>`;
}

function SyncBox() {
  const status = useLoad(() => api("GET", "/prices/sync"), []);
  const action = useAction();
  const syncNow = async () => {
    const result = await action.run(() => api("POST", "/prices/sync"), t("Synced."));
    if (result) status.reload();
  };
  return html`<section class="panel row wrap" data-testid="price-sync">
    <button type="button" onClick=${syncNow} disabled=${action.busy}>${t("Sync from models.dev now")}</button>
    ${status.data ? html`<span class="muted" data-testid="price-sync-status">${status.data.last_sync_at
        ? t("Last sync: {time} · {count} models", { time: formatTime(status.data.last_sync_at), count: status.data.models ?? 0 })
        : t("Not synced yet: the built-in price list of {count} models is in use", { count: status.data.models ?? 0 })}</span>
      ${status.data.last_error ? html`<span class="error">${t("Last error: {message}", { message: status.data.last_error })}</span>` : null}` : html`<${LoadState} state=${status} />`}
    <${ErrorMessage} error=${action.error} /><${DoneMessage} text=${action.done} />
  </section>`;
}

export function PricesPage() {
  const channels = useLoad(() => api("GET", "/channels"), []);
  const [channelId, setChannelId] = useState(null);
  const [search, setSearch] = useState("");
  const [newModel, setNewModel] = useState("");
  const prices = useLoad(() => api("GET", `/prices${query({ channel_id: channelId })}`), [channelId]);
  const channelList = Array.isArray(channels.data) ? channels.data : channels.data?.items || [];
  const rows = (prices.data?.items || []).filter((row) => row.model.toLowerCase().includes(search.toLowerCase()));
  const shown = newModel && !rows.some((row) => row.model === newModel) ? [{ id: null, model: newModel, source: "unpriced" }, ...rows] : rows;
  return html`<div class="stack">
    <${SyncBox} />
    <div class="tabs" role="tablist" aria-label=${t("Price lists")}>
      <button type="button" role="tab" aria-selected=${channelId === null} onClick=${() => setChannelId(null)}>${t("Defaults")}</button>
      ${channelList.map((channel) => html`<button type="button" role="tab" aria-selected=${channelId === channel.id} onClick=${() => setChannelId(channel.id)}>${channel.name}</button>`)}
    </div>
    <div class="toolbar row wrap">
      <input type="search" aria-label=${t("Search models")} placeholder=${t("Search models")} value=${search} onInput=${(event) => setSearch(event.currentTarget.value)} />
      <input aria-label=${t("Price a model not in the list")} placeholder=${t("Price a model not in the list")} value=${newModel} onChange=${(event) => setNewModel(event.currentTarget.value.trim())} />
    </div>
    <p class="muted">${t("USD per 1M tokens. New prices apply to new requests.")}</p>
    <${LoadState} state=${prices} />
    <${ErrorMessage} error=${channels.error} />
    <div class="table-scroll"><table class="responsive" data-testid="price-table">
      <thead><tr><th>${t("Model")}</th>${PRICE_FIELDS.map((field) => html`<th>${t(PRICE_LABELS[field])}</th>`)}<th>${t("Actions")}</th></tr></thead>
      <tbody>${shown.map((row) => html`<${PriceRow} key=${`${channelId}-${row.model}-${row.id}-${row.input}-${row.output}`} row=${row} channelId=${channelId} onChanged=${prices.reload} />`)}
      ${prices.data && !shown.length ? html`<tr><td colspan="6" class="muted">${t("No prices match.")}</td></tr>` : null}</tbody>
    </table></div>
  </div>`;
}
