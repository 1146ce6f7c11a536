// The design form (django-jsonform) draws each setting's <label> beside its input without tying
// them together, so screen readers announce unnamed fields (axe: "label", "select-name"). This
// ties each label to its input (an id and for=), also for the fields the form draws later (a new
// block), and names the inputs that have no label of their own (the items of a list) after their
// list. A static file: the admin's CSP allows no inline script. Served by studyapp/admin/forms.py.
(() => {
  "use strict";
  let next = 0;

  function listName(input) {
    const group = input.closest(".rjf-form-group");
    const title = group?.querySelector(":scope > .rjf-form-group-title, :scope > .rjf-form-group-inner > .rjf-form-group-title");
    return title?.textContent.trim() || "";
  }

  function tie(container) {
    for (const input of container.querySelectorAll("input, select, textarea")) {
      if (input.type === "hidden" || input.closest("label")) continue;  // a label wraps it: named
      if (!input.id) input.id = `rjf-field-${++next}`;
      const label = input.closest(".rjf-input-group")?.previousElementSibling;
      if (label?.tagName === "LABEL") {
        label.htmlFor = input.id;
      } else if (!input.hasAttribute("aria-label")) {
        const name = listName(input);
        const position = [...(input.closest(".rjf-form-group-inner, .rjf-form-group")?.querySelectorAll(input.tagName) ?? [])].indexOf(input) + 1;
        input.setAttribute("aria-label", `${name || "Item"} ${position}`.trim());
      }
    }
  }

  const start = () => {
    for (const container of document.querySelectorAll("[data-django-jsonform-container]")) {
      tie(container);
      new MutationObserver(() => tie(container)).observe(container, { childList: true, subtree: true });
    }
  };
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
