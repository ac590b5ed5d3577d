// The dashboard: today's and the period's totals, trend charts, the year heatmap and the channel, model and client key rankings.
import { html, useState } from "../lib.js";
import { api, query, timeZoneOffset, localDate } from "../api.js";
import { t } from "../i18n.js";
import { useLoad, LoadState, ErrorMessage, Chart, formatNumber, formatCost, formatPercent, formatMilliseconds } from "../components.js";

const PERIODS = [{ days: 1, label: "Today" }, { days: 7, label: "7 days" }, { days: 30, label: "30 days" }];

/** RFC3339 bounds of the last `days` local calendar days, ending now. */
function periodBounds(days) {
  const start = new Date();
  start.setHours(0, 0, 0, 0);
  start.setDate(start.getDate() - (days - 1));
  return { from: start.toISOString(), to: new Date().toISOString() };
}

function totalTokens(row) {
  return (row.input_tokens || 0) + (row.output_tokens || 0) + (row.cache_read_tokens || 0) + (row.cache_write_tokens || 0);
}

function SummaryCards({ title, summary, testIdentifier }) {
  return html`<section class="cards" aria-label=${title} data-testid=${testIdentifier}>
    <div class="stat-card"><span class="muted">${title} · ${t("Requests")}</span><strong data-testid=${`${testIdentifier}-requests`}>${formatNumber(summary.requests)}</strong>
      <small class="muted">${t("{success} ok / {failed} failed", { success: formatNumber(summary.success), failed: formatNumber(summary.failed) })}</small></div>
    <div class="stat-card"><span class="muted">${title} · ${t("Success rate")}</span><strong data-testid=${`${testIdentifier}-success-rate`}>${formatPercent(summary.success, summary.requests)}</strong></div>
    <div class="stat-card"><span class="muted">${title} · ${t("Tokens")}</span><strong data-testid=${`${testIdentifier}-tokens`}>${formatNumber(totalTokens(summary))}</strong>
      <small class="muted">${t("in {input} · out {output} · cache read {read} · cache write {write}", { input: formatNumber(summary.input_tokens), output: formatNumber(summary.output_tokens), read: formatNumber(summary.cache_read_tokens), write: formatNumber(summary.cache_write_tokens) })}</small></div>
    <div class="stat-card"><span class="muted">${title} · ${t("Cost")}</span><strong data-testid=${`${testIdentifier}-cost`}>${formatCost(summary.cost)}</strong></div>
  </section>`;
}

function Trends({ days }) {
  const zone = timeZoneOffset();
  const trend = useLoad(() => (days === 1
    ? api("GET", `/stats/hourly${query({ date: localDate(), tz: zone })}`)
    : api("GET", `/stats/daily${query({ days, tz: zone })}`)), [days]);
  if (!trend.data) return html`<${LoadState} state=${trend} />`;
  const items = trend.data.items || [];
  const labels = items.map((item) => (days === 1 ? `${String(item.hour).padStart(2, "0")}:00` : item.date.slice(5)));
  return html`<div class="charts" data-testid="trend-charts" data-points=${items.length}>
    <${Chart} title=${t("Requests")} labels=${labels} series=${[{ label: t("Requests"), values: items.map((item) => item.requests) }, { label: t("Failed"), values: items.map((item) => item.failed) }]} />
    <${Chart} title=${t("Tokens")} labels=${labels} series=${[{ label: t("Input"), values: items.map((item) => item.input_tokens) }, { label: t("Output"), values: items.map((item) => item.output_tokens) }, { label: t("Cache read"), values: items.map((item) => item.cache_read_tokens) }]} />
    <${Chart} title=${t("Cost")} labels=${labels} series=${[{ label: t("Cost"), values: items.map((item) => item.cost), format: formatCost }]} />
  </div>`;
}

/** A year of daily request counts as a GitHub-style grid: one column per week, Monday on top. */
function Heatmap() {
  const year = useLoad(() => api("GET", `/stats/daily${query({ days: 365, tz: timeZoneOffset() })}`), []);
  if (!year.data) return html`<${LoadState} state=${year} />`;
  const items = year.data.items || [];
  const busiest = Math.max(1, ...items.map((item) => item.requests));
  const firstWeekday = items.length ? (new Date(`${items[0].date}T00:00:00`).getDay() + 6) % 7 : 0;
  const cells = [...Array(firstWeekday).fill(null), ...items];
  const level = (requests) => (requests === 0 ? 0 : Math.min(4, 1 + Math.floor((3.999 * requests) / busiest)));
  return html`<section class="panel" aria-label=${t("Activity over the last year")}>
    <h2>${t("Activity over the last year")}</h2>
    <div class="heatmap-scroll"><div class="heatmap" role="img" aria-label=${t("{days} days, busiest day {count} requests", { days: items.length, count: busiest })}>
      ${cells.map((item) => (item
        ? html`<span class=${`heat heat-${level(item.requests)}`} title=${`${item.date}: ${item.requests} ${t("requests")}`}></span>`
        : html`<span class="heat heat-empty"></span>`))}
    </div></div>
  </section>`;
}

function Rankings({ bounds }) {
  const channels = useLoad(() => api("GET", `/stats/channels${query(bounds)}`), [bounds.from]);
  const models = useLoad(() => api("GET", `/stats/models${query(bounds)}`), [bounds.from]);
  const keys = useLoad(() => api("GET", `/stats/api-keys${query(bounds)}`), [bounds.from]);
  const byRequests = (rows) => [...(rows || [])].sort((left, right) => right.requests - left.requests).slice(0, 10);
  return html`<div class="rankings">
    <section class="panel" data-testid="channel-ranking"><h2>${t("Channel ranking")}</h2>
      <${LoadState} state=${channels} />
      ${channels.data ? html`<div class="table-scroll"><table class="responsive">
        <thead><tr><th>${t("Channel")}</th><th class="number">${t("Requests")}</th><th class="number">${t("Success rate")}</th><th class="number">${t("Avg latency")}</th><th class="number">${t("Avg TTFT")}</th><th class="number">${t("Cost")}</th></tr></thead>
        <tbody>${byRequests(channels.data.items).map((row) => html`<tr>
          <td data-label=${t("Channel")}>${row.channel_name || (row.channel_id === null ? t("(no channel)") : t("(deleted)"))}</td><td class="number" data-label=${t("Requests")}>${formatNumber(row.requests)}</td><td class="number" data-label=${t("Success rate")}>${formatPercent(row.success, row.requests)}</td>
          <td class="number" data-label=${t("Avg latency")}>${formatMilliseconds(row.avg_latency_ms)}</td><td class="number" data-label=${t("Avg TTFT")}>${formatMilliseconds(row.avg_ttft_ms)}</td><td class="number" data-label=${t("Cost")}>${formatCost(row.cost)}</td></tr>`)}
        ${channels.data.items?.length ? null : html`<tr><td colspan="6" class="muted">${t("No requests yet.")}</td></tr>`}</tbody></table></div>` : null}
    </section>
    <section class="panel" data-testid="model-ranking"><h2>${t("Top models")}</h2>
      <${LoadState} state=${models} />
      ${models.data ? html`<ol class="ranking-list">${byRequests(models.data.items).map((row) => html`<li><span>${row.model} <small class="muted">${row.channel_name || ""}</small></span><span>${formatNumber(row.requests)} · ${formatCost(row.cost)}</span></li>`)}
        ${models.data.items?.length ? null : html`<li class="muted">${t("No requests yet.")}</li>`}</ol>` : null}
    </section>
    <section class="panel" data-testid="key-ranking"><h2>${t("Top client keys")}</h2>
      <${LoadState} state=${keys} />
      ${keys.data ? html`<ol class="ranking-list">${byRequests(keys.data.items).map((row) => html`<li><span>${row.api_key_name || (row.api_key_id === null ? t("(no client key)") : t("(deleted)"))}</span><span>${formatNumber(row.requests)} · ${formatCost(row.cost)}</span></li>`)}
        ${keys.data.items?.length ? null : html`<li class="muted">${t("No requests yet.")}</li>`}</ol>` : null}
    </section>
  </div>`;
}

export function DashboardPage() {
  const [days, setDays] = useState(7);
  const today = useLoad(() => api("GET", `/stats/summary${query(periodBounds(1))}`), []);
  const bounds = periodBounds(days);
  const period = useLoad(() => api("GET", `/stats/summary${query(bounds)}`), [days]);
  return html`<div class="stack">
    <div class="toolbar" role="group" aria-label=${t("Period")}>
      ${PERIODS.map((choice) => html`<button type="button" class=${choice.days === days ? "primary" : ""} aria-pressed=${choice.days === days} onClick=${() => setDays(choice.days)}>${t(choice.label)}</button>`)}
    </div>
    ${today.data ? html`<${SummaryCards} title=${t("Today")} summary=${today.data} testIdentifier="today" />` : html`<${LoadState} state=${today} />`}
    ${days !== 1 ? (period.data ? html`<${SummaryCards} title=${t(PERIODS.find((choice) => choice.days === days).label)} summary=${period.data} testIdentifier="period" />` : html`<${LoadState} state=${period} />`) : null}
    <${Trends} days=${days} />
    <${Rankings} bounds=${bounds} />
    <${Heatmap} />
  </div>`;
}
