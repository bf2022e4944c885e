// The request log: filters, older pages by cursor, and a live tail that polls for newer entries.

import { get } from "../api.js";
import { clearError, field, h, replace, showError, table, when } from "../dom.js";

const FILTERS = ["org", "key", "route", "status", "since", "until", "limit"];
const TAIL_EVERY = 2000; // ms
const TAIL_OVERLAP = 10000; // ms: entries are written in batches, so look a little further back
const MOST_SHOWN = 2000;

function toLocalInput(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return "";
  const local = new Date(date.getTime() - date.getTimezoneOffset() * 60000);
  return local.toISOString().slice(0, 19);
}

const fromLocalInput = (value) => (value ? new Date(value).toISOString() : "");

function row(entry) {
  const statusClass = entry.status >= 500 ? "s5" : entry.status >= 400 ? "s4" : "s2";
  return [
    when(entry.time),
    h("span", { class: `code ${statusClass}` }, entry.status),
    entry.method,
    h("code", {}, entry.path),
    entry.route || "—",
    entry.orgId ? h("code", {}, entry.orgId) : "—",
    entry.keyId ? h("code", {}, entry.keyId) : "—",
    entry.durationMs ?? "—",
    entry.upstreamMs ?? "—",
    entry.clientIp || "—",
    [entry.rateLimited ? "rate limited" : "", entry.idempotency || ""].filter(Boolean).join(", ") || "—",
    h("code", {}, entry.requestId),
  ];
}

export async function requestsPage({ main, params, navigate }) {
  const query = {};
  for (const name of FILTERS) if (params.get(name)) query[name] = params.get(name);

  const inputs = {
    org: h("input", { name: "org", value: query.org || "", autocomplete: "off", placeholder: "slug or id" }),
    key: h("input", { name: "key", value: query.key || "", autocomplete: "off", placeholder: "key_…" }),
    route: h("input", { name: "route", value: query.route || "", autocomplete: "off" }),
    status: h("input", { name: "status", value: query.status || "", autocomplete: "off", placeholder: "404 or 4xx", pattern: "[1-5]([0-9]{2}|xx)" }),
    since: h("input", { name: "since", type: "datetime-local", step: 1, value: toLocalInput(query.since) }),
    until: h("input", { name: "until", type: "datetime-local", step: 1, value: toLocalInput(query.until) }),
    limit: h("input", { name: "limit", type: "number", min: 1, max: 1000, value: query.limit || "50" }),
  };
  const form = h("form", { class: "filters", "aria-label": "Filter the request log" },
    field("Org", inputs.org), field("Key", inputs.key), field("Route", inputs.route),
    field("Status", inputs.status), field("Since", inputs.since), field("Until", inputs.until),
    field("Limit", inputs.limit),
    h("button", { type: "submit" }, "Apply"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const next = {};
    for (const name of ["org", "key", "route", "status", "limit"]) next[name] = inputs[name].value.trim();
    next.since = fromLocalInput(inputs.since.value);
    next.until = fromLocalInput(inputs.until.value);
    navigate("/requests", next);
  });

  const entries = [];
  const seen = new Set();
  let cursor = null;
  const slot = h("div");
  const older = h("button", { type: "button", class: "secondary" }, "Older");
  const tailBox = h("input", { type: "checkbox", name: "tail" });
  const tailNote = h("p", { class: "status", role: "status" });
  const tailLabel = h("label", { class: "toggle" }, tailBox, " Live tail (every 2 s)");

  const draw = () => {
    slot.replaceChildren(table(
      `Requests, newest first (${entries.length} shown)`,
      ["Time", "Status", "Method", "Path", "Route", "Org", "Key", "ms", "Upstream ms", "Client IP", "Notes", "Request id"],
      entries.map(row),
      { empty: "No request matches." },
    ));
    older.hidden = !cursor;
  };
  const add = (items, atTop) => {
    const fresh = items.filter((e) => !seen.has(e.requestId));
    for (const e of fresh) seen.add(e.requestId);
    if (atTop) {
      entries.unshift(...fresh);
      entries.sort((a, b) => (a.time < b.time ? 1 : a.time > b.time ? -1 : 0));
    } else {
      entries.push(...fresh);
    }
    entries.splice(MOST_SHOWN);
    return fresh.length;
  };

  const page = await get("/admin/requests", query);
  add(page.data, false);
  cursor = page.meta.next_cursor;

  older.addEventListener("click", async () => {
    try {
      const more = await get("/admin/requests", { ...query, cursor });
      add(more.data, false);
      cursor = more.meta.next_cursor;
      draw();
    } catch (error) {
      showError(error);
    }
  });

  let timer = null;
  let busy = false;
  const poll = async () => {
    if (busy) return;
    busy = true;
    try {
      const newest = entries.length ? new Date(entries[0].time).getTime() : Date.now() - 60000;
      const since = new Date(newest - TAIL_OVERLAP).toISOString();
      const { until, ...rest } = query; // a tail looks forward: no end
      const recent = await get("/admin/requests", { ...rest, since });
      const count = add(recent.data, true);
      if (count) draw();
      tailNote.textContent = `Live: checked ${new Date().toLocaleTimeString()}, ${count} new.`;
      clearError();
    } catch (error) {
      showError(error);
    } finally {
      busy = false;
    }
  };
  const stop = () => {
    if (timer !== null) window.clearInterval(timer);
    timer = null;
  };
  tailBox.addEventListener("change", () => {
    stop();
    if (tailBox.checked) {
      poll();
      timer = window.setInterval(poll, TAIL_EVERY);
    } else {
      tailNote.textContent = "Live tail off.";
    }
  });

  draw();
  replace(main, h("h1", {}, "Request log"), form, h("div", { class: "toolbar" }, tailLabel, tailNote), slot, older);
  return { stop };
}
