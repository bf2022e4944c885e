// A secret shown once (a new API key, a webhook signing secret), with a Copy button. It lives
// in this element only: never in the URL, storage or a later page.

import { h, status } from "./dom.js";

function selectText(el) {
  const range = document.createRange();
  range.selectNodeContents(el);
  const selection = window.getSelection();
  selection.removeAllRanges();
  selection.addRange(range);
}

export function secretBox(title, secret, note) {
  const code = h("code", { class: "secret-value" }, secret);
  const said = h("div", { class: "copy-status" });
  const copy = h("button", { type: "button" }, "Copy");
  copy.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(secret);
      said.replaceChildren(status("Copied to the clipboard."));
    } catch (error) {
      selectText(code); // no clipboard access: the text is selected for Ctrl+C / ⌘C
      said.replaceChildren(status("Selected: press Ctrl+C (⌘C) to copy."));
    }
  });
  return h(
    "section",
    { class: "secret", "aria-label": title },
    h("h2", {}, title),
    h("p", {}, note, " It is shown this once: copy it now."),
    h("div", { class: "secret-row" }, code, copy),
    said,
  );
}
