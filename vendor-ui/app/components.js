// Shared building blocks for the pages: data loading, error display, form fields, number formats and the uPlot chart.
import { html, useState, useEffect, useRef, useCallback } from "./lib.js";
import { t } from "./i18n.js";
import uPlot from "/vendor/uplot-1.6.31.js";

/** Loads data with an async function and reloads when the dependencies change; errors are kept for display, never thrown. */
export function useLoad(load, dependencies = []) {
  const [state, setState] = useState({ data: null, error: null, loading: true });
  const reload = useCallback(() => {
    setState((previous) => ({ ...previous, loading: true }));
    return load().then(
      (data) => setState({ data, error: null, loading: false }),
      (error) => setState({ data: null, error, loading: false }),
    );
  }, dependencies);
  useEffect(() => { reload(); }, [reload]);
  return { ...state, reload };
}

/** Runs an action, remembering its error or success message so it can be shown next to the button that started it. */
export function useAction() {
  const [state, setState] = useState({ busy: false, error: null, done: null });
  const run = async (action, doneMessage) => {
    setState({ busy: true, error: null, done: null });
    try {
      const result = await action();
      setState({ busy: false, error: null, done: doneMessage || null });
      return result;
    } catch (error) {
      setState({ busy: false, error, done: null });
      return undefined;
    }
  };
  return { ...state, run, clear: () => setState({ busy: false, error: null, done: null }) };
}

export function ErrorMessage({ error }) {
  if (!error) return null;
  return html`<p class="error" role="alert">${error.message || String(error)}</p>`;
}

export function DoneMessage({ text }) {
  return text ? html`<p class="done" role="status">${text}</p>` : null;
}

/** A loading placeholder or the load error, so a page whose endpoint is missing still renders. */
export function LoadState({ state }) {
  if (state.error) return html`<${ErrorMessage} error=${state.error} />`;
  if (state.loading && !state.data) return html`<p class="muted">${t("Loading…")}</p>`;
  return null;
}

/** A labelled control: the control sits inside its label, which ties them together for screen readers and clicks. */
export function Field({ label, hint, children, error, wide }) {
  return html`<div class=${wide ? "field field-wide" : "field"}>
    <label><span class="field-label">${label}</span>${children}</label>
    ${hint ? html`<small class="muted">${hint}</small>` : null}
    ${error ? html`<small class="error" role="alert">${error}</small>` : null}
  </div>`;
}

export function Toggle({ checked, onChange, label }) {
  return html`<label class="toggle"><input type="checkbox" role="switch" checked=${checked} aria-label=${label}
    onChange=${(event) => onChange(event.currentTarget.checked)} /><span aria-hidden="true"></span></label>`;
}

export function Badge({ kind, children }) {
  return html`<span class=${`badge badge-${kind || "neutral"}`}>${children}</span>`;
}

const integerFormat = new Intl.NumberFormat();
export function formatNumber(value) {
  if (value === null || value === undefined) return "–";
  const number = Number(value);
  if (Math.abs(number) >= 1e9) return `${(number / 1e9).toFixed(2)}B`;
  if (Math.abs(number) >= 1e6) return `${(number / 1e6).toFixed(2)}M`;
  if (Math.abs(number) >= 1e4) return `${(number / 1e3).toFixed(1)}K`;
  return integerFormat.format(number);
}
export function formatCost(value) {
  if (value === null || value === undefined) return "–";
  const number = Number(value);
  return `$${number < 1 && number > 0 ? number.toFixed(6).replace(/0+$/, "") : number.toFixed(2)}`;
}
export function formatPercent(part, whole) {
  if (!whole) return "–";
  return `${((100 * part) / whole).toFixed(1)}%`;
}
export function formatMilliseconds(value) {
  if (value === null || value === undefined) return "–";
  const number = Number(value);
  return number >= 1000 ? `${(number / 1000).toFixed(2)} s` : `${Math.round(number)} ms`;
}
export function formatTime(value) {
  if (!value) return "–";
  const date = typeof value === "number" ? new Date(value * 1000) : new Date(value);
  return Number.isNaN(date.getTime()) ? String(value) : date.toLocaleString();
}

/** A uPlot chart that follows its container's width and redraws when the data or the theme changes. */
export function Chart({ labels, series, height = 200, title }) {
  const container = useRef(null);
  useEffect(() => {
    const element = container.current;
    if (!element) return undefined;
    const styles = getComputedStyle(document.documentElement);
    const axisColour = styles.getPropertyValue("--text-muted").trim() || "#666";
    const gridColour = styles.getPropertyValue("--border").trim() || "#ddd";
    const palette = ["--chart-1", "--chart-2", "--chart-3", "--chart-4"].map((name) => styles.getPropertyValue(name).trim());
    const axis = { stroke: axisColour, grid: { stroke: gridColour, width: 1 }, ticks: { stroke: gridColour } };
    const latest = labels.length - 1;
    const options = {
      width: Math.max(element.clientWidth, 200),
      height,
      cursor: { drag: { x: false, y: false } },
      scales: { x: { time: false } },
      axes: [
        { ...axis, values: (plot, ticks) => ticks.map((tick) => labels[Math.round(tick)] ?? "") },
        { ...axis, size: 60, values: (plot, ticks) => ticks.map((tick) => series[0]?.format ? series[0].format(tick) : formatNumber(tick)) },
      ],
      // The legend shows the hovered point; with the pointer elsewhere it shows the latest one
      // (uPlot passes a null index then), so it always reads as "at this time, these values".
      series: [{ label: t("Time"), value: (plot, raw, seriesIndex, index) => labels[index ?? latest] ?? "" }, ...series.map((one, index) => ({
        label: one.label,
        stroke: palette[index % palette.length],
        fill: `${palette[index % palette.length]}22`,
        width: 2,
        points: { show: labels.length <= 31 },
        value: (plot, raw, seriesIndex, pointIndex) => {
          const value = pointIndex == null ? one.values[latest] : raw;
          return value === null || value === undefined ? "–" : one.format ? one.format(value) : formatNumber(value);
        },
      }))],
    };
    const data = [labels.map((label, index) => index), ...series.map((one) => one.values)];
    const plot = new uPlot(options, data, element);
    const observer = new ResizeObserver(() => plot.setSize({ width: Math.max(element.clientWidth, 200), height }));
    observer.observe(element);
    return () => { observer.disconnect(); plot.destroy(); };
  }, [JSON.stringify(labels), JSON.stringify(series.map((one) => one.values)), document.documentElement.dataset.theme]);
  return html`<figure class="chart"><figcaption>${title}</figcaption><div ref=${container} data-chart=${title}></div></figure>`;
}

/** Asks before a destructive action; `confirm()` is keyboard-accessible and needs no extra markup. */
export function confirmAction(message) { return window.confirm(message); }

/** Copies text and reports whether it worked (the Clipboard API needs a secure context, so a fallback selects the text). */
export async function copyText(text) {
  try { await navigator.clipboard.writeText(text); return true; } catch { return false; }
}
