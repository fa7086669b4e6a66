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

// The overview chart: requests and spend per hour, from the JSON in #chart's data-series
// ([unix seconds, requests, spend in nano-USD] per point), drawn with the vendored uPlot.
function drawChart() {
  const el = document.getElementById("chart");
  if (!el || typeof uPlot === "undefined") return;
  let points;
  try { points = JSON.parse(el.dataset.series || "[]"); } catch (_) { return; }
  if (points.length === 0) return;
  const data = [
    points.map((p) => p[0]),
    points.map((p) => p[1]),
    points.map((p) => p[2] / 1e9),
  ];
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
    axes: [
      {},
      { scale: "req", label: "Requests" },
      { scale: "usd", side: 1, label: "USD", grid: { show: false } },
    ],
  }, data, el);
}

if (document.readyState === "loading") {
  document.addEventListener("DOMContentLoaded", drawChart);
} else {
  drawChart();
}
