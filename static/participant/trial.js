// One trial on screen: the input, what the trial shows beside it (the model's output, the arm's
// aid, the edit), the answer options and, when the study asks, confidence. Resolves with the
// participant's answer; sending it is session.js's job.
//
// Nothing here reveals more than the API sent: the API sends neither the truth nor the model's
// output for what a trial asks about (see studyapp/selectors/participation.py).

import { h } from "./dom.js";
import { TrialClock } from "./measures.js";

const CONFIDENCE_ANCHORS = ["Guessing", "Completely sure"];

// Edited images come from the server with the changed region already outlined in the pixels
// (the same in every browser and in the exports), so nothing is drawn over them here.
function figure(src, caption, cls = "") {
  const img = h("img", { src, alt: caption, class: "pixel", decoding: "async", draggable: "false" });
  return h("figure", { class: `media ${cls}` }, h("div", { class: "frame" }, img), h("figcaption", { text: caption }));
}

function formatValue(value) {
  const abs = Math.abs(value);
  if (abs !== 0 && (abs >= 1e5 || abs < 1e-3)) return value.toExponential(2);
  return String(Math.round(value * 1000) / 1000);
}

function featureTable(features, changed = null) {
  const rows = features.map((f) => {
    const isChanged = changed && changed.feature === f.name;
    const value = isChanged
      ? h("span", { class: "change" }, h("s", { text: formatValue(changed.from_value) }), " \u2192 ",
          h("strong", { text: formatValue(changed.to_value) }))
      : formatValue(f.value);
    return h("li", { class: isChanged ? "feature changed" : "feature" },
      h("span", { class: "feature-name", text: f.name }),
      h("span", { class: "feature-value" }, value, f.unit ? ` ${f.unit}` : ""),
      f.description ? h("span", { class: "feature-description", text: f.description }) : null,
      isChanged ? h("span", { class: "visually-hidden", text: " (changed)" }) : null);
  });
  return h("ul", { class: "features", "aria-label": "The example's values" }, rows);
}

function bars(features) {
  const max = Math.max(...features.map((f) => Math.abs(f.attribution)), 1e-12);
  return h("div", { class: "aid bars" },
    h("h3", { text: "Explanation: the values that mattered most" }),
    h("p", { class: "legend" },
      h("span", { class: "swatch positive", "aria-hidden": "true" }), " pushes towards the model's answer  ",
      h("span", { class: "swatch negative", "aria-hidden": "true" }), " pushes away from it"),
    h("ol", { class: "bar-list" }, features.map((f) => {
      const bar = h("span", { class: `bar ${f.attribution >= 0 ? "positive" : "negative"}` });
      bar.style.width = `${Math.max(2, (100 * Math.abs(f.attribution)) / max)}%`;
      return h("li", {},
        h("span", { class: "bar-name", text: f.name }),
        h("span", { class: "bar-track" }, bar),
        h("span", { class: "bar-value", text: `${f.attribution >= 0 ? "+" : "\u2212"}${formatValue(Math.abs(f.attribution))}` }));
    })));
}

function aid(content) {
  if (!content) return null;
  if (content.kind === "map") {
    return h("div", { class: "aid" }, figure(content.image, "Explanation: the coloured areas are the parts of the image that mattered most to the model"));
  }
  if (content.kind === "exemplars") {
    return h("div", { class: "aid exemplars" }, figure(content.image, content.text || "Examples that resemble this one"));
  }
  if (content.kind === "ood_warning") {
    return h("p", { class: content.flagged ? "aid warning" : "aid note", role: "note", text: content.text });
  }
  if (content.kind === "bars") return bars(content.features);
  return null;
}

function modelOutput(trial) {
  if (!trial.model_output) return null;
  const which = trial.task === "forward" ? "The model's answer" : "The model's answer for the original example";
  return h("p", { class: "model-output" }, `${which}: `, h("strong", { text: trial.model_output.label }));
}

function editView(trial) {
  const edit = trial.edit;
  if (!edit) return null;
  if (edit.image) return figure(edit.image, "The changed example (the outlined area was changed)", "edited");
  return h("p", { class: "edit-summary" }, "Changed: ", h("strong", { text: edit.feature }), " from ",
    formatValue(edit.from_value), " to ", h("strong", { text: formatValue(edit.to_value) }));
}

function choiceOption(trial, option, name) {
  const input = h("input", { type: "radio", name, value: option.value, id: `${name}-${option.value}` });
  let body;
  if (trial.task === "counterfactual_choose") {
    const title = `Change ${option.value + 1}`;
    body = option.image
      ? h("span", { class: "choice-media" }, figure(option.image, title))
      : h("span", { class: "choice-text" }, h("strong", { text: `${title}: ` }), `${option.feature} from `,
          formatValue(option.from_value), " to ", formatValue(option.to_value));
  } else {
    body = h("span", { class: "choice-text", text: option.label });
  }
  return h("label", { class: "choice", for: input.id },
    input, option.value < 10 ? h("kbd", { class: "key", "aria-hidden": "true", text: String((option.value + 1) % 10) }) : null, body);
}

function confidenceScale(name) {
  return h("fieldset", { class: "confidence" },
    h("legend", { text: "How sure are you?" }),
    h("div", { class: "scale" }, [1, 2, 3, 4, 5, 6, 7].map((v) => h("label", { class: "scale-point" },
      h("input", { type: "radio", name, value: v, "aria-label": `${v} of 7${v === 1 ? `, ${CONFIDENCE_ANCHORS[0]}` : v === 7 ? `, ${CONFIDENCE_ANCHORS[1]}` : ""}` }),
      h("span", { text: String(v) })))),
    h("div", { class: "anchors", "aria-hidden": "true" }, h("span", { text: CONFIDENCE_ANCHORS[0] }), h("span", { text: CONFIDENCE_ANCHORS[1] })));
}

async function decoded(images) {
  // The stimulus counts as shown only once every image is decoded (a half-loaded image is not a
  // stimulus): response time starts after this.
  await Promise.all(images.map(async (img) => {
    for (let attempt = 0; attempt < 3; attempt++) {
      try { await img.decode(); return; } catch {
        await new Promise((r) => setTimeout(r, 500 * (attempt + 1)));
        const src = img.src; img.src = ""; img.src = src;
      }
    }
    throw new Error("An image of this example did not load.");
  }));
}

function nextPaint() { return new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))); }

/**
 * Show a trial in `root` and wait for the answer.
 * @returns {Promise<{answer:number, confidence:number|null, client_rt_ms:number, events:Array}>}
 */
export async function showTrial(root, trial, onShown = () => {}) {
  const learning = trial.task === "forward" && trial.model_output !== null;
  const name = `answer-${trial.number}`;
  const form = h("form", { class: "trial", "aria-labelledby": "question", novalidate: true });
  const stage = h("div", { class: `stage ${trial.task}` });
  const aidView = aid(trial.aid);
  if (trial.input.image) {
    // Images side by side where there is room (two columns on a phone): the example, its
    // changed copy, then the explanation; text (the model's output, a warning) above them.
    const notes = [modelOutput(trial), aidView && !aidView.matches("figure, .aid:has(figure)") ? aidView : null].filter(Boolean);
    if (notes.length) stage.append(h("div", { class: "notes" }, notes));
    const original = trial.edit || trial.task === "counterfactual_choose" ? "The original example" : "The example";
    stage.append(h("div", { class: "gallery" }, [figure(trial.input.image, original), editView(trial),
      aidView && aidView.querySelector("figure") ? aidView : null].filter(Boolean)));
  } else {
    stage.append(featureTable(trial.input.features, trial.edit && !trial.edit.image ? trial.edit : null));
    const side = h("div", { class: "beside" }, modelOutput(trial), aidView, editView(trial));
    if (side.childElementCount) stage.append(side);
  }

  const question = h("h2", { id: "question", class: "question", text: trial.question });
  const submit = h("button", { type: "submit", class: "button primary", disabled: !learning, text: learning ? "Continue" : "Submit answer" });
  const hint = h("p", { class: "hint", id: "answer-hint" });
  let choices = null;
  let confidence = null;
  if (!learning) {
    choices = h("fieldset", { class: `choices ${trial.task === "counterfactual_choose" ? "media-choices" : ""}` },
      h("legend", { class: "visually-hidden", text: trial.question }),
      trial.options.map((o) => choiceOption(trial, o, name)));
    if (trial.confidence) confidence = confidenceScale(`confidence-${trial.number}`);
  }
  form.append(...[question, stage, choices, confidence, h("div", { class: "actions" }, submit), hint].filter(Boolean));
  form.classList.add("loading");
  root.append(form);

  await decoded([...form.querySelectorAll("img")]);
  form.classList.remove("loading");
  await nextPaint();
  const clock = new TrialClock();
  clock.start();
  onShown();

  let chosenAt = null;
  const selected = () => {
    const answer = form.querySelector(`input[name="${name}"]:checked`);
    const conf = form.querySelector(`input[name="confidence-${trial.number}"]:checked`);
    return { answer: answer ? Number(answer.value) : null, confidence: conf ? Number(conf.value) : null };
  };
  const refresh = () => {
    if (learning) return;
    const { answer, confidence: conf } = selected();
    const ready = answer !== null && (!trial.confidence || conf !== null);
    submit.disabled = !ready;
    hint.textContent = ready ? "" : answer === null ? "Choose an answer." : "Say how sure you are.";
  };
  form.addEventListener("change", (event) => {
    if (event.target.name === name) chosenAt = clock.elapsed();
    refresh();
  });
  refresh();

  const onKey = (event) => {
    if (event.altKey || event.ctrlKey || event.metaKey) return;
    if (event.key === "Enter" && !(event.target instanceof HTMLButtonElement)) {
      event.preventDefault();
      if (!submit.disabled) form.requestSubmit();
      return;
    }
    if (learning) return;
    const n = event.key === "0" ? 10 : Number(event.key);
    if (/^[0-9]$/.test(event.key) && n >= 1 && n <= trial.options.length && !(event.target instanceof HTMLInputElement && event.target.name.startsWith("confidence"))) {
      const input = form.querySelector(`#${name}-${n - 1}`);
      input.checked = true;
      input.focus();
      input.dispatchEvent(new Event("change", { bubbles: true }));
    }
  };
  document.addEventListener("keydown", onKey);
  (learning ? submit : form.querySelector("input")).focus({ preventScroll: true });

  return new Promise((resolve) => {
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      if (submit.disabled) return;
      submit.disabled = true; // a double click sends one answer
      document.removeEventListener("keydown", onKey);
      clock.stop();
      const { answer, confidence: conf } = selected();
      const rt = chosenAt ?? clock.elapsed();
      form.querySelectorAll("input").forEach((i) => { i.disabled = true; });
      resolve({ answer: learning ? trial.model_output.value : answer, confidence: learning ? null : conf,
                client_rt_ms: rt, events: clock.events });
    });
  });
}
