// An org's webhook endpoints (create: the signing secret shown once, ping), and an endpoint's
// deliveries with their attempts and a Retry button.

import { get, post, segment } from "../api.js";
import { field, h, replace, showError, status, table, when } from "../dom.js";
import { secretBox } from "../secret.js";

const words = (text) => text.split(/[\s,]+/).filter(Boolean);

export async function webhooksPage(ctx, ref) {
  const { main } = ctx;
  const [org, endpoints] = await Promise.all([
    get(`/admin/orgs/${segment(ref)}`),
    get(`/admin/orgs/${segment(ref)}/webhooks`),
  ]);
  const o = org.data;
  const url = h("input", { name: "url", type: "url", required: true, autocomplete: "off", placeholder: "https://example.com/hooks" });
  const events = h("input", { name: "events", required: true, autocomplete: "off", placeholder: "invoice.created, *" });
  const description = h("input", { name: "description", maxlength: 500, autocomplete: "off" });
  const form = h("form", { class: "inline-form", "aria-labelledby": "create-webhook" },
    h("h2", { id: "create-webhook" }, "Add an endpoint"),
    h("div", { class: "fields" },
      field("URL", url),
      field("Events", events, "Event types separated by spaces or commas; * for every type."),
      field("Description", description)),
    h("button", { type: "submit" }, "Add endpoint"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const answer = await post(`/admin/orgs/${segment(o.id)}/webhooks`, {
        url: url.value, events: words(events.value), description: description.value,
      });
      await webhooksPage(ctx, ref);
      const box = secretBox(`Signing secret of ${answer.data.url}`, answer.data.secret, `The endpoint ${answer.data.id}.`);
      main.querySelector(".secret-slot").replaceChildren(box);
      box.querySelector("button").focus();
    } catch (error) {
      showError(error);
    }
  });
  const slug = encodeURIComponent(o.slug);
  replace(
    main,
    h("p", { class: "crumbs" }, h("a", { href: "#/orgs" }, "Orgs"), " / ",
      h("a", { href: `#/orgs/${slug}` }, o.slug), " / webhooks"),
    h("h1", {}, `Webhooks of ${o.name}`),
    h("div", { class: "secret-slot" }),
    table(`Endpoints (${endpoints.data.length})`, ["URL", "Events", "Status", "Description", "Created", "Deliveries"],
      endpoints.data.map((e) => [
        h("code", {}, e.url), e.events.join(" "),
        e.disabledReason ? `${e.status} (${e.disabledReason})` : e.status,
        e.description || "—", when(e.createdAt),
        h("a", { href: `#/webhooks/${encodeURIComponent(e.id)}` }, "Deliveries", h("span", { class: "sr-only" }, ` of ${e.url}`)),
      ]),
      { empty: "No endpoint yet." }),
    form,
  );
}

function attempts(delivery) {
  if (!delivery.history || delivery.history.length === 0) return "—";
  return h("details", {}, h("summary", {}, `${delivery.history.length} attempt(s)`),
    h("ol", {}, delivery.history.map((a) => h("li", {},
      when(a.at), ` ${a.status ?? "no answer"}, ${a.durationMs} ms`, a.error ? `, ${a.error}` : ""))));
}

export async function deliveriesPage(ctx, id) {
  const { main } = ctx;
  const [endpoint, deliveries] = await Promise.all([
    get(`/admin/webhooks/${segment(id)}`),
    get(`/admin/webhooks/${segment(id)}/deliveries`),
  ]);
  const e = endpoint.data;
  const note = h("div");
  const ping = h("button", { type: "button", class: "secondary" }, "Send a ping");
  ping.addEventListener("click", async () => {
    try {
      const answer = await post(`/admin/webhooks/${segment(id)}/ping`);
      await deliveriesPage(ctx, id);
      main.querySelector(".notes").replaceChildren(status(`Ping ${answer.data.eventId} queued.`));
    } catch (error) {
      showError(error);
    }
  });
  const refresh = h("button", { type: "button", class: "secondary" }, "Refresh");
  refresh.addEventListener("click", () => deliveriesPage(ctx, id).catch(showError));
  const rows = deliveries.data.map((d) => {
    const retry = h("button", { type: "button", class: "secondary" }, "Retry", h("span", { class: "sr-only" }, ` ${d.id}`));
    retry.disabled = d.status === "delivering";
    retry.addEventListener("click", async () => {
      try {
        await post(`/admin/deliveries/${segment(d.id)}/retry`);
        await deliveriesPage(ctx, id);
        main.querySelector(".notes").replaceChildren(status(`Delivery ${d.id} is due now.`));
      } catch (error) {
        showError(error);
      }
    });
    return [h("code", {}, d.id), d.eventType, h("span", { class: `state ${d.status}` }, d.status),
      d.attempts, d.lastStatus ?? "—", when(d.nextAttemptAt), when(d.createdAt), attempts(d), retry];
  });
  replace(
    main,
    h("p", { class: "crumbs" }, h("a", { href: "#/orgs" }, "Orgs"), " / ",
      h("a", { href: `#/orgs/${encodeURIComponent(e.orgId)}/webhooks` }, "webhooks"), " / ", e.id),
    h("h1", {}, "Deliveries"),
    h("dl", { class: "facts" },
      h("dt", {}, "Endpoint"), h("dd", {}, h("code", {}, e.url)),
      h("dt", {}, "Events"), h("dd", {}, e.events.join(" ")),
      h("dt", {}, "Status"), h("dd", {}, e.status)),
    h("div", { class: "toolbar" }, ping, refresh, h("div", { class: "notes" }, note)),
    table(`Deliveries, newest first (${deliveries.data.length})`,
      ["Id", "Event", "Status", "Attempts", "Last status", "Next attempt", "Created", "History", "Retry"],
      rows, { empty: "No delivery yet: send a ping." }),
  );
}
