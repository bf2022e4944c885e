// The audit log: who did what to which record, newest first, with the record before and after.

import { get } from "../api.js";
import { field, h, replace, select, showError, table, when } from "../dom.js";

const ACTIONS = [
  "org.create", "org.update", "key.create", "key.update", "key.revoke", "key.rotate",
  "webhook.create", "webhook.update", "webhook.delete", "webhook.rotate", "delivery.retry",
  "config.reload",
];

function change(entry) {
  if (!entry.before && !entry.after) return "—";
  const parts = [];
  if (entry.before) parts.push(h("h3", {}, "Before"), h("pre", {}, JSON.stringify(entry.before, null, 2)));
  if (entry.after) parts.push(h("h3", {}, "After"), h("pre", {}, JSON.stringify(entry.after, null, 2)));
  return h("details", {}, h("summary", {}, "Records"), parts);
}

const toIso = (value) => (value ? new Date(value).toISOString() : "");

export async function auditPage({ main, params, navigate }) {
  const query = {};
  for (const name of ["org", "action", "since", "until", "limit"]) if (params.get(name)) query[name] = params.get(name);

  const org = h("input", { name: "org", value: query.org || "", autocomplete: "off", placeholder: "slug or id" });
  const action = select("action", [["", "any"], ...ACTIONS.map((a) => [a, a])], query.action || "");
  const since = h("input", { name: "since", type: "datetime-local" });
  const until = h("input", { name: "until", type: "datetime-local" });
  const form = h("form", { class: "filters", "aria-label": "Filter the audit log" },
    field("Org", org), field("Action", action), field("Since", since), field("Until", until),
    h("button", { type: "submit" }, "Apply"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    navigate("/audit", { org: org.value.trim(), action: action.value, since: toIso(since.value), until: toIso(until.value) });
  });

  const entries = [];
  let cursor = null;
  const slot = h("div");
  const older = h("button", { type: "button", class: "secondary" }, "Older");
  const draw = () => {
    slot.replaceChildren(table(
      `Audit entries, newest first (${entries.length} shown)`,
      ["Time", "Actor", "Action", "Target", "Org", "Change"],
      entries.map((e) => [
        when(e.time), h("strong", {}, e.actor), h("code", {}, e.action),
        e.target ? h("code", {}, e.target) : "—", e.orgId ? h("code", {}, e.orgId) : "—", change(e),
      ]),
      { empty: "No entry matches." },
    ));
    older.hidden = !cursor;
  };
  const load = async (extra) => {
    const page = await get("/admin/audit", { ...query, ...extra });
    entries.push(...page.data);
    cursor = page.meta.next_cursor;
  };
  await load({});
  older.addEventListener("click", async () => {
    try {
      await load({ cursor });
      draw();
    } catch (error) {
      showError(error);
    }
  });
  draw();
  replace(main, h("h1", {}, "Audit log"), form, slot, older);
}
