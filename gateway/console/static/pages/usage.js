// An org's usage: requests per minute or hour as a chart (and a table), and where its limits stand.

import { get, segment } from "../api.js";
import { usageChart } from "../chart.js";
import { field, h, replace, select, showError, table } from "../dom.js";

const RANGES = {
  minute: [["60", "last hour"], ["360", "last 6 hours"], ["1440", "last 24 hours"]],
  hour: [["24", "last 24 hours"], ["168", "last 7 days"], ["720", "last 30 days"]],
};
const SECONDS = { minute: 60, hour: 3600 };

function seconds(value) {
  for (const [unit, size] of [["d", 86400], ["h", 3600], ["min", 60], ["s", 1]]) {
    if (value >= size && value % size === 0) return `${value / size} ${unit}`;
  }
  return `${value} s`;
}

function bucketText(limit) {
  if (!limit) return null;
  const per = typeof limit.per === "number" ? seconds(limit.per) : limit.per;
  return `${limit.requests} per ${per}${limit.burst ? ` (+${limit.burst} at once)` : ""}`;
}

function limitsView(limits) {
  if (!limits) return null;
  const facts = [["Plan", limits.plan], ["Each key", bucketText(limits.rateLimit)],
    ["The org", bucketText(limits.orgRateLimit)], ["Quota", bucketText(limits.quota)]];
  const parts = [h("dl", { class: "facts" }, facts.flatMap(([name, text]) =>
    [h("dt", {}, name), h("dd", {}, text || "no limit")]))];
  if (limits.state && limits.state.length) {
    parts.push(table(
      "Where the org's limits stand now",
      ["Policy", "Limit", "Window (s)", "Remaining", "Whole again in (s)"],
      limits.state.map((s) => [s.policy, s.limit, s.windowSeconds, s.remaining, s.resetSeconds]),
    ));
  }
  return h("section", { "aria-labelledby": "limits" }, h("h2", { id: "limits" }, "Limits"), parts);
}

export async function usagePage(ctx, ref) {
  const { main, params, navigate } = ctx;
  const bucket = params.get("bucket") === "hour" ? "hour" : "minute";
  const ranges = RANGES[bucket];
  const span = ranges.some(([v]) => v === params.get("span")) ? params.get("span") : ranges[0][0];
  const now = Date.now();
  const size = SECONDS[bucket] * 1000;
  // Whole buckets: from the start of the one `span` buckets ago, through the running one.
  const since = new Date((Math.floor(now / size) - Number(span) + 1) * size).toISOString();
  const org = await get(`/admin/orgs/${segment(ref)}`);
  const usage = await get("/admin/usage", { org: org.data.id, bucket, since });

  const bucketSelect = select("bucket", [["minute", "per minute"], ["hour", "per hour"]], bucket);
  const spanSelect = select("span", ranges, span);
  const form = h("form", { class: "filters", "aria-label": "Usage range" },
    field("Buckets", bucketSelect), field("Range", spanSelect),
    h("button", { type: "submit" }, "Show"));
  bucketSelect.addEventListener("change", () => {
    navigate(`/orgs/${ref}/usage`, { bucket: bucketSelect.value });
  });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const target = `/orgs/${ref}/usage`;
    const next = { bucket: bucketSelect.value, span: spanSelect.value };
    if (window.location.hash === `#${target}?${new URLSearchParams(next)}`) {
      usagePage(ctx, ref).catch(showError); // the same range: fetch it again
    } else {
      navigate(target, next);
    }
  });
  const title = `Requests per ${bucket} for ${org.data.slug}`;
  const slug = encodeURIComponent(org.data.slug);
  replace(
    main,
    h("p", { class: "crumbs" }, h("a", { href: "#/orgs" }, "Orgs"), " / ",
      h("a", { href: `#/orgs/${slug}` }, org.data.slug), " / usage"),
    h("h1", {}, `Usage of ${org.data.name}`),
    form,
    usageChart(usage.data, bucket, title),
    limitsView(usage.meta && usage.meta.limits),
  );
}
