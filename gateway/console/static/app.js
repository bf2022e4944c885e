// The console's router: #/orgs, #/orgs/{org}, #/orgs/{org}/usage, #/orgs/{org}/webhooks,
// #/webhooks/{id}, #/requests?..., #/audit?... Each page module renders into <main>.

import { clearError, h, replace, showError } from "./dom.js";
import { auditPage } from "./pages/audit.js";
import { orgPage } from "./pages/org.js";
import { orgsPage } from "./pages/orgs.js";
import { requestsPage } from "./pages/requests.js";
import { usagePage } from "./pages/usage.js";
import { deliveriesPage, webhooksPage } from "./pages/webhooks.js";

const ROUTES = [
  [/^\/orgs$/, "orgs", () => orgsPage],
  [/^\/orgs\/([^/]+)$/, "orgs", (org) => (ctx) => orgPage(ctx, org)],
  [/^\/orgs\/([^/]+)\/usage$/, "orgs", (org) => (ctx) => usagePage(ctx, org)],
  [/^\/orgs\/([^/]+)\/webhooks$/, "orgs", (org) => (ctx) => webhooksPage(ctx, org)],
  [/^\/webhooks\/([^/]+)$/, "orgs", (id) => (ctx) => deliveriesPage(ctx, id)],
  [/^\/requests$/, "requests", () => requestsPage],
  [/^\/audit$/, "audit", () => auditPage],
];

const main = document.getElementById("main");
let current = null; // the page shown: {stop()} ends what it runs (the live tail)

function parse() {
  const raw = window.location.hash.replace(/^#/, "") || "/orgs";
  const cut = raw.indexOf("?");
  const path = cut < 0 ? raw : raw.slice(0, cut);
  return { path, params: new URLSearchParams(cut < 0 ? "" : raw.slice(cut + 1)) };
}

/** Go to a route, e.g. navigate("/requests", {org: "acme"}). */
export function navigate(path, params) {
  const query = new URLSearchParams();
  for (const [name, value] of Object.entries(params || {})) if (value) query.set(name, value);
  const text = query.toString();
  window.location.hash = text ? `${path}?${text}` : path;
}

async function render() {
  if (current && current.stop) current.stop();
  current = null;
  clearError();
  const { path, params } = parse();
  let page = null;
  let section = null;
  for (const [pattern, nav, make] of ROUTES) {
    const match = pattern.exec(path);
    if (match) {
      page = make(...match.slice(1).map(decodeURIComponent));
      section = nav;
      break;
    }
  }
  for (const link of document.querySelectorAll("[data-nav]")) {
    if (link.dataset.nav === section) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  if (!page) {
    replace(main, h("h1", { tabindex: -1 }, "Not found"), h("p", {}, h("a", { href: "#/orgs" }, "Back to the orgs")));
    return;
  }
  const ctx = { main, params, navigate };
  try {
    current = (await page(ctx)) || null;
  } catch (error) {
    showError(error);
  }
  const heading = main.querySelector("h1");
  if (heading) {
    heading.setAttribute("tabindex", "-1");
    document.title = `${heading.textContent} · Gateway console`;
    heading.focus(); // a screen reader hears the new page's name
  }
}

window.addEventListener("hashchange", render);
render();
