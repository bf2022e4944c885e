// Orgs: the list, and a form that creates one on a plan from the config.

import { get, post } from "../api.js";
import { field, h, replace, select, showError, table, when } from "../dom.js";

export async function orgsPage({ main, navigate }) {
  const [orgs, config] = await Promise.all([get("/admin/orgs"), get("/admin/config")]);
  const plans = Object.keys(config.data.config.plans || {});

  const slug = h("input", { name: "slug", required: true, pattern: "[a-z0-9]([a-z0-9\\-]{0,61}[a-z0-9])?", maxlength: 63, autocomplete: "off" });
  const name = h("input", { name: "name", required: true, maxlength: 200, autocomplete: "off" });
  const plan = select("plan", plans.map((p) => [p, p]), plans[0]);
  const form = h(
    "form",
    { class: "inline-form", "aria-labelledby": "create-org" },
    h("h2", { id: "create-org" }, "Create an org"),
    h("div", { class: "fields" },
      field("Slug", slug, "Lower-case letters, digits and '-'; used in URLs."),
      field("Name", name),
      field("Plan", plan)),
    h("button", { type: "submit" }, "Create org"),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const created = await post("/admin/orgs", { slug: slug.value, name: name.value, plan: plan.value });
      navigate(`/orgs/${encodeURIComponent(created.data.slug)}`);
    } catch (error) {
      showError(error);
    }
  });

  const rows = orgs.data.map((org) => [
    h("a", { href: `#/orgs/${encodeURIComponent(org.slug)}` }, org.slug),
    org.name,
    org.plan,
    h("code", {}, org.id),
    when(org.createdAt),
  ]);
  replace(
    main,
    h("h1", {}, "Orgs"),
    table(`Orgs (${orgs.data.length})`, ["Slug", "Name", "Plan", "Id", "Created"], rows, { empty: "No org yet: create one below." }),
    form,
  );
}
