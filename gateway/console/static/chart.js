// The usage chart: an SVG bar chart drawn with DOM calls, with the same numbers in a table.

import { h, s, table, when } from "./dom.js";

const WIDTH = 720;
const HEIGHT = 220;
const PAD = { top: 12, right: 8, bottom: 28, left: 44 };
const SERIES = [
  ["ok", "Answered", (b) => Math.max(0, b.requests - b.errors - b.rateLimited)],
  ["errors", "Errors (4xx/5xx but 429)", (b) => b.errors],
  ["limited", "Rate limited (429)", (b) => b.rateLimited],
];

const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;

function label(iso, bucket) {
  const date = new Date(iso);
  return bucket === "hour"
    ? date.toLocaleString([], { month: "short", day: "numeric", hour: "2-digit" })
    : date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

/** A <figure>: stacked bars per bucket, a legend, and the numbers as a table. */
export function usageChart(buckets, bucket, title) {
  const total = buckets.reduce((sum, b) => sum + b.requests, 0);
  const peak = Math.max(1, ...buckets.map((b) => b.requests));
  const plotW = WIDTH - PAD.left - PAD.right;
  const plotH = HEIGHT - PAD.top - PAD.bottom;
  const step = plotW / Math.max(1, buckets.length);
  const barW = Math.max(1, step * 0.8);
  const y = (value) => PAD.top + plotH - (value / peak) * plotH;

  const svg = s("svg", {
    viewBox: `0 0 ${WIDTH} ${HEIGHT}`,
    class: "chart",
    role: "img",
    "aria-label": `${title}: ${plural(total, "request")} in ${plural(buckets.length, `${bucket} bucket`)},`
      + ` at most ${total === 0 ? 0 : peak} in one.`,
  });
  // Axis and grid: zero, half and the peak.
  for (const value of [0, Math.round(peak / 2), peak]) {
    svg.append(
      s("line", { x1: PAD.left, x2: WIDTH - PAD.right, y1: y(value), y2: y(value), class: "grid" }),
      s("text", { x: PAD.left - 6, y: y(value) + 4, class: "tick", "text-anchor": "end" }, value),
    );
  }
  buckets.forEach((b, i) => {
    const x = PAD.left + i * step + (step - barW) / 2;
    let base = 0;
    const group = s("g", {}, s("title", {}, `${label(b.start, bucket)}: ${b.requests} requests,`
      + ` ${b.errors} errors, ${b.rateLimited} rate limited`));
    for (const [kind, , value] of SERIES) {
      const amount = value(b);
      if (amount <= 0) continue;
      group.append(s("rect", {
        x, width: barW, y: y(base + amount), height: y(base) - y(base + amount), class: `bar ${kind}`,
      }));
      base += amount;
    }
    svg.append(group);
  });
  if (buckets.length) {
    const first = buckets[0];
    const last = buckets[buckets.length - 1];
    svg.append(
      s("text", { x: PAD.left, y: HEIGHT - 8, class: "tick" }, label(first.start, bucket)),
      s("text", { x: WIDTH - PAD.right, y: HEIGHT - 8, class: "tick", "text-anchor": "end" },
        label(last.start, bucket)),
    );
  }
  const legend = h("ul", { class: "legend" },
    SERIES.map(([kind, text]) => h("li", {}, h("span", { class: `swatch ${kind}`, "aria-hidden": "true" }), text)));
  const numbers = table(
    `${title}, as numbers`,
    ["Bucket start", "Requests", "Errors", "Rate limited"],
    buckets.map((b) => [when(b.start), b.requests, b.errors, b.rateLimited]),
  );
  return h(
    "figure",
    { class: "usage" },
    h("figcaption", {}, `${title}: ${plural(total, "request")}`),
    svg,
    legend,
    h("details", {}, h("summary", {}, "The numbers as a table"), numbers),
  );
}
