// Tiny DOM builder: text is always set as text (study texts come from researchers, labels from
// datasets; nothing is parsed as HTML).

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "text") el.textContent = value;
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

// A researcher's text: blank lines separate paragraphs, single newlines are kept as line breaks.
export function paragraphs(text, cls = "prose") {
  const box = h("div", { class: cls });
  for (const block of String(text || "").trim().split(/\n\s*\n/)) {
    if (!block.trim()) continue;
    const p = h("p");
    block.split("\n").forEach((line, i) => { if (i) p.append(h("br")); p.append(line); });
    box.append(p);
  }
  return box;
}

export function clear(el) { while (el.firstChild) el.firstChild.remove(); return el; }

// Moves keyboard and screen-reader focus to a new screen's heading.
export function focusHeading(root) {
  const heading = root.querySelector("h2, h1");
  if (heading) { heading.setAttribute("tabindex", "-1"); heading.focus({ preventScroll: false }); }
}
