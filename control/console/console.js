// Keyplane console: the little behaviour the pages need, loaded as a file because the
// Content-Security-Policy allows no inline script.
"use strict";

// Copy buttons: <button data-copy="ID"> copies the value or text of the element #ID.
document.addEventListener("click", (event) => {
  const button = event.target.closest("button[data-copy]");
  if (!button) return;
  const source = document.getElementById(button.dataset.copy);
  if (!source) return;
  const text = "value" in source && source.value !== undefined ? source.value : source.textContent;
  navigator.clipboard.writeText(text).then(
    () => { button.textContent = "Copied"; },
    () => { if (source.select) source.select(); },
  );
});

// Tick labels for a money axis: as many decimals as the tick step needs, so a small span
// ($0.000012 to $0.000048) reads as distinct labels instead of "$0" repeated.
function usdTicks(u, splits) {
  const step = splits.length > 1 ? Math.abs(splits[1] - splits[0]) : Math.abs(splits[0] || 1);
  const decimals = step > 0 ? Math.min(9, Math.max(0, Math.ceil(-Math.log10(step) - 1e-9))) : 2;
  return splits.map((v) => "$" + v.toFixed(decimals));
}

// Tick steps for a count axis: whole numbers only (there is no half a request).
const countIncrs = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1e3, 2e3, 5e3, 1e4, 2e4, 5e4, 1e5, 2e5,
  5e5, 1e6, 2e6, 5e6, 1e7, 2e7, 5e7, 1e8, 2e8, 5e8, 1e9];

// Tick steps for a money axis, from a nano-dollar up.
const usdIncrs = [];
for (let e = -9; e <= 9; e++) {
  for (const m of [1, 2, 5]) usdIncrs.push(m * Math.pow(10, e));
}

// The overview's charts, from the JSON in #chart's data-series: per point [unix seconds,
// requests, spend in nano-USD, errors, latency p50, p99, first token p50, p99] (null where no
// request measured it), drawn with the vendored uPlot. #chart: requests and spend;
// #chart-health: error rate and latency percentiles.
function drawCharts() {
  const el = document.getElementById("chart");
  if (!el || typeof uPlot === "undefined") return;
  let points;
  try { points = JSON.parse(el.dataset.series || "[]"); } catch (_) { return; }
  if (points.length === 0) return;
  const col = (i) => points.map((p) => p[i]);
  const width = Math.max(320, el.clientWidth || 800);
  new uPlot({
    width,
    height: 260,
    series: [
      {},
      { label: "Requests", stroke: "#2a6fdb", width: 2, scale: "req" },
      { label: "Spend (USD)", stroke: "#d9822b", width: 2, scale: "usd",
        value: (u, v) => (v == null ? "" : "$" + v.toFixed(6)) },
    ],
    scales: { usd: { range: (u, min, max) => [0, max > 0 ? max * 1.1 : 1e-6] },
      req: { range: (u, min, max) => [0, max > 0 ? max * 1.1 : 1] } },
    axes: [
      {},
      { scale: "req", label: "Requests", incrs: countIncrs },
      { scale: "usd", side: 1, label: "USD", grid: { show: false }, incrs: usdIncrs,
        values: usdTicks, size: 80 },
    ],
  }, [col(0), col(1), col(2).map((v) => v / 1e9)], el);

  const health = document.getElementById("chart-health");
  if (!health) return;
  const rate = points.map((p) => (p[1] > 0 ? (100 * p[3]) / p[1] : null));
  const ms = (v) => (v == null ? "" : v + " ms");
  new uPlot({
    width,
    height: 260,
    series: [
      {},
      { label: "Error rate (%)", stroke: "#c23030", width: 2, scale: "pct",
        value: (u, v) => (v == null ? "" : v.toFixed(1) + "%") },
      { label: "Latency p50", stroke: "#2a6fdb", width: 2, scale: "ms", value: (u, v) => ms(v) },
      { label: "Latency p99", stroke: "#2a6fdb", width: 1, dash: [6, 4], scale: "ms",
        value: (u, v) => ms(v) },
      { label: "First token p50", stroke: "#3a9a5b", width: 2, scale: "ms", value: (u, v) => ms(v) },
      { label: "First token p99", stroke: "#3a9a5b", width: 1, dash: [6, 4], scale: "ms",
        value: (u, v) => ms(v) },
    ],
    scales: { pct: { range: [0, 100] }, ms: { range: (u, min, max) => [0, max > 0 ? max * 1.1 : 1] } },
    axes: [
      {},
      { scale: "ms", label: "ms", incrs: countIncrs },
      { scale: "pct", side: 1, label: "errors %", grid: { show: false },
        values: (u, splits) => splits.map((v) => v + "%") },
    ],
  }, [col(0), rate, col(4), col(5), col(6), col(7)], health);
}

if (document.readyState === "loading") {
  document.addEventListener("DOMContentLoaded", drawCharts);
} else {
  drawCharts();
}
