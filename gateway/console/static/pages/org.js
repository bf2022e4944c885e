// An org and its API keys: create (the secret shown once), rotate with a grace, revoke.

import { get, post, segment } from "../api.js";
import { field, h, replace, select, showError, status, table, when } from "../dom.js";
import { secretBox } from "../secret.js";

const GRACES = [["0s", "no grace"], ["1h", "1 h grace"], ["24h", "24 h grace"], ["7d", "7 d grace"]];

function keyState(key) {
  if (key.revokedAt) return "revoked";
  if (key.expiresAt && new Date(key.expiresAt).getTime() <= Date.now()) return "expired";
  if (key.rotatedTo) return "rotated"; // works until its expiry: the grace
  return "active";
}

const words = (text) => text.split(/[\s,]+/).filter(Boolean);

export async function orgPage(ctx, ref) {
  const { main } = ctx;
  const [org, keys] = await Promise.all([
    get(`/admin/orgs/${segment(ref)}`),
    get(`/admin/orgs/${segment(ref)}/keys`),
  ]);
  const o = org.data;
  const shown = h("div", { class: "secret-slot" });
  const reload = async (secretSection) => {
    await orgPage(ctx, ref);
    if (secretSection) {
      main.querySelector(".secret-slot").replaceChildren(secretSection);
      secretSection.querySelector("button").focus();
    }
  };

  const rows = keys.data.map((key) => {
    const state = keyState(key);
    const actions = h("div", { class: "actions" });
    if (state === "active" || state === "rotated") {
      const grace = select("grace", GRACES, "24h");
      grace.setAttribute("aria-label", `How long the old key works after rotating ${key.name}`);
      const rotate = h("button", { type: "button", class: "secondary" }, "Rotate", h("span", { class: "sr-only" }, ` ${key.name}`));
      rotate.addEventListener("click", async () => {
        if (!window.confirm(`Rotate the key "${key.name}"? ${grace.value === "0s" ? "The old key stops at once." : `The old key works for ${grace.value} more.`}`)) return;
        try {
          const answer = await post(`/admin/keys/${segment(key.id)}/rotate`, { grace: grace.value });
          await reload(secretBox(`New secret for ${answer.data.name}`, answer.data.secret, `The rotated key ${answer.data.id}.`));
        } catch (error) {
          showError(error);
        }
      });
      const revoke = h("button", { type: "button", class: "danger" }, "Revoke", h("span", { class: "sr-only" }, ` ${key.name}`));
      revoke.addEventListener("click", async () => {
        if (!window.confirm(`Revoke the key "${key.name}" (${key.prefix}…${key.last4})? Calls with it fail at once.`)) return;
        try {
          await post(`/admin/keys/${segment(key.id)}/revoke`);
          await reload(status(`Key ${key.name} revoked.`));
        } catch (error) {
          showError(error);
        }
      });
      if (state === "active") actions.append(grace, rotate);
      actions.append(revoke);
    }
    return [
      key.name,
      h("code", {}, key.id),
      h("code", {}, `${key.prefix}…${key.last4}`),
      key.environment,
      key.scopes.join(" ") || "—",
      h("span", { class: `state ${state}` }, state),
      when(key.createdAt),
      when(key.expiresAt),
      when(key.lastUsedAt),
      actions,
    ];
  });

  const name = h("input", { name: "name", required: true, maxlength: 200, autocomplete: "off" });
  const scopes = h("input", { name: "scopes", autocomplete: "off", placeholder: "read write" });
  const environment = select("environment", [["live", "live"], ["test", "test"]], "live");
  const expires = h("input", { name: "expiresAt", type: "datetime-local" });
  const ips = h("input", { name: "allowedIps", autocomplete: "off", placeholder: "203.0.113.0/24" });
  const form = h(
    "form",
    { class: "inline-form", "aria-labelledby": "create-key" },
    h("h2", { id: "create-key" }, "Create a key"),
    h("div", { class: "fields" },
      field("Name", name),
      field("Scopes", scopes, "Separated by spaces or commas; none for a key without scopes."),
      field("Environment", environment),
      field("Expires", expires, "Your local time; empty: never."),
      field("Allowed IPs", ips, "CIDRs separated by spaces or commas; empty: any address.")),
    h("button", { type: "submit" }, "Create key"),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const answer = await post(`/admin/orgs/${segment(o.id)}/keys`, {
        name: name.value,
        scopes: words(scopes.value),
        environment: environment.value,
        expiresAt: expires.value ? new Date(expires.value).toISOString() : null,
        allowedIps: words(ips.value),
      });
      await reload(secretBox(`Secret of the key ${answer.data.name}`, answer.data.secret, `The key ${answer.data.id}.`));
    } catch (error) {
      showError(error);
    }
  });

  const slug = encodeURIComponent(o.slug);
  replace(
    main,
    h("p", { class: "crumbs" }, h("a", { href: "#/orgs" }, "Orgs"), " / ", o.slug),
    h("h1", {}, o.name),
    h("dl", { class: "facts" },
      h("dt", {}, "Slug"), h("dd", {}, o.slug),
      h("dt", {}, "Id"), h("dd", {}, h("code", {}, o.id)),
      h("dt", {}, "Plan"), h("dd", {}, o.plan),
      h("dt", {}, "Created"), h("dd", {}, when(o.createdAt))),
    h("nav", { class: "subnav", "aria-label": "This org" },
      h("ul", {},
        h("li", {}, h("a", { href: `#/orgs/${slug}/usage` }, "Usage")),
        h("li", {}, h("a", { href: `#/requests?org=${slug}` }, "Request log")),
        h("li", {}, h("a", { href: `#/orgs/${slug}/webhooks` }, "Webhooks")),
        h("li", {}, h("a", { href: `#/audit?org=${slug}` }, "Audit log")))),
    shown,
    table(`API keys (${keys.data.length})`,
      ["Name", "Id", "Key", "Env", "Scopes", "State", "Created", "Expires", "Last used", "Actions"],
      rows, { empty: "No key yet: create one below." }),
    form,
  );
}
