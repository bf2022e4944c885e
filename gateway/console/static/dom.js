// DOM helpers. SECURITY: every value reaches the page as text (textContent, attributes set
// one by one), never as HTML: data from the API cannot become markup or script.

const SVG_NS = "http://www.w3.org/2000/svg";

function fill(el, attrs, children) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      el.addEventListener(name.slice(2), value);
    } else if (value === true) {
      el.setAttribute(name, "");
    } else {
      el.setAttribute(name, String(value));
    }
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** An HTML element: h("a", {href: "#/orgs"}, "Orgs"). Strings become text nodes. */
export function h(tag, attrs, ...children) {
  return fill(document.createElement(tag), attrs, children);
}

/** An SVG element, the same way. */
export function s(tag, attrs, ...children) {
  return fill(document.createElementNS(SVG_NS, tag), attrs, children);
}

export function replace(el, ...children) {
  el.replaceChildren();
  return fill(el, {}, children);
}

let ids = 0;
/** A fresh id for label/aria pairs. */
export function uid(prefix = "f") {
  ids += 1;
  return `${prefix}-${ids}`;
}

/** A <time> showing a stored RFC 3339 time in the reader's zone; "—" for none. */
export function when(iso) {
  if (!iso) return h("span", { class: "muted" }, "—");
  const date = new Date(iso);
  const shown = Number.isNaN(date.getTime()) ? iso : date.toLocaleString();
  return h("time", { datetime: iso, title: iso }, shown);
}

/** A table in a wrapper that scrolls sideways on narrow screens (and by keyboard). */
export function table(caption, headers, rows, { empty = "Nothing yet." } = {}) {
  const body = h("tbody");
  if (rows.length === 0) {
    body.append(h("tr", {}, h("td", { colspan: headers.length, class: "muted" }, empty)));
  }
  for (const cells of rows) {
    body.append(h("tr", {}, cells.map((cell) => h("td", {}, cell))));
  }
  return h(
    "div",
    { class: "table-wrap", role: "region", "aria-label": caption, tabindex: 0 },
    h(
      "table",
      {},
      h("caption", {}, caption),
      h("thead", {}, h("tr", {}, headers.map((text) => h("th", { scope: "col" }, text)))),
      body,
    ),
  );
}

/** A labelled form field: an input (or the control given) with its <label>. */
export function field(label, control, hint) {
  const id = control.id || uid();
  control.id = id;
  const parts = [h("label", { for: id }, label), control];
  if (hint) {
    const hintId = `${id}-hint`;
    control.setAttribute("aria-describedby", hintId);
    parts.push(h("p", { id: hintId, class: "hint" }, hint));
  }
  return h("div", { class: "field" }, parts);
}

/** A <select> of [value, text] pairs. */
export function select(name, options, chosen) {
  return h(
    "select",
    { name },
    options.map(([value, text]) => h("option", { value, selected: value === chosen }, text)),
  );
}

const alertRegion = () => document.getElementById("alert");

/** Show an error to the reader (the role="alert" region announces it). */
export function showError(error) {
  const region = alertRegion();
  const code = error && error.code ? `${error.code}: ` : "";
  const message = error && error.message ? error.message : String(error);
  replace(region, code + message);
  region.scrollIntoView({ block: "nearest" });
}

export function clearError() {
  alertRegion().replaceChildren();
}

/** A polite status line, for "Copied", "Saved" and the like. */
export function status(text) {
  return h("p", { class: "status", role: "status" }, text);
}
