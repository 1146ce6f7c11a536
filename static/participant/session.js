// The participant's session: one page that renders each step from the participant API's state
// and resumes wherever the server says the participant is (refresh, back button, a new tab).

import { h, paragraphs, clear, focusHeading } from "./dom.js";
import { Api, ApiError, Outbox, newKey } from "./api.js";
import { showTrial } from "./trial.js";
import { deviceInfo } from "./measures.js";

const root = document.getElementById("session");
const studyId = root.dataset.study;
const screen = h("div", { class: "screen" });
const statusLine = h("p", { class: "save-status", role: "status", "aria-live": "polite" });
const bar = h("progress", { max: "100", value: "0", "aria-label": "Progress through the study" });
const withdrawBox = h("div", { class: "withdraw" });
const outbox = new Outbox(studyId);
let savedTimer = null;

const status = {
  saving(retry) { if (!retry) show("Saving\u2026", "saving"); },
  retrying(seconds, offline) {
    show(offline ? "Not saved yet: you seem to be offline. Your answer is kept and will be sent when the connection is back."
                 : `Not saved yet: the server did not answer. Trying again in ${Math.max(1, seconds)} s; your answer is kept.`, "retrying");
  },
  saved() { show("Saved", "saved"); clearTimeout(savedTimer); savedTimer = setTimeout(() => show("", ""), 2000); },
};
function show(text, cls) { statusLine.textContent = text; statusLine.className = `save-status ${cls}`; }

const api = new Api(root.dataset.api, status);

// While an answer is not confirmed, leaving the page asks first (it is kept and resent anyway).
window.addEventListener("beforeunload", (event) => { if (outbox.pending()) { event.preventDefault(); event.returnValue = ""; } });
// A page restored from the back-forward cache may show a step that is done: ask the server again.
window.addEventListener("pageshow", (event) => { if (event.persisted) window.location.reload(); });

const STEP_SHARE = { instructions: 2, comprehension: 6, trials: 10, questionnaire: 88, demographics: 92, debrief: 96, done: 100 };

function setProgress(state) {
  let value = STEP_SHARE[state.step] ?? 0;
  const p = state.progress || {};
  if (state.step === "trials" && p.total) value = 10 + Math.round((78 * p.answered) / p.total);
  bar.value = value;
  bar.setAttribute("aria-valuetext", state.step === "trials" && p.total ? `Example ${Math.min(p.answered + 1, p.total)} of ${p.total}` : `${value}%`);
}

// Each screen names itself (data-screen) for tests and for styling; headings take the focus.
let shown = 0;
function mark(name, trial = null) {
  screen.dataset.screen = name;
  screen.dataset.shown = String(++shown); // changes with every screen, even a repeated one
  if (trial === null) delete screen.dataset.trial; else screen.dataset.trial = String(trial);
}

function screenOf(name, ...children) {
  clear(screen).append(...children.filter(Boolean));
  mark(name);
  focusHeading(screen);
  window.scrollTo({ top: 0 });
}

function waitClick(button) {
  return new Promise((resolve) => button.addEventListener("click", () => { button.disabled = true; resolve(); }, { once: true }));
}

function problemText(error) {
  return (error.data && (error.data.problems || [error.data.detail]).filter(Boolean).join(" ")) || error.message;
}

async function postStep(path, body) {
  // Step changes are idempotent on the server; a 409 means the session moved on (another tab,
  // a resend): the current state is the answer.
  const result = await api.post(path, body, { saving: true });
  status.saved();
  if (result.status === 409) return (await api.get("state")).data;
  return result.data;
}

// ------------------------------------------------------------------ steps

async function instructions(state) {
  const c = state.content;
  const button = h("button", { type: "button", class: "button primary" });
  const countdown = h("p", { class: "hint", "aria-live": "polite" });
  screenOf("instructions", h("h2", { text: "Instructions" }), paragraphs(c.text), h("div", { class: "actions" }, button), countdown);
  let left = c.seconds_left;
  const tick = () => {
    button.disabled = left > 0;
    button.textContent = left > 0 ? `Continue (in ${left} s)` : "Continue";
    countdown.textContent = left > 0 ? "Please read the instructions; you can continue when the time is up." : "";
  };
  tick();
  await new Promise((resolve) => {
    if (left <= 0) { resolve(); return; }
    const timer = setInterval(() => { left -= 1; tick(); if (left <= 0) { clearInterval(timer); resolve(); } }, 1000);
  });
  button.focus();
  await waitClick(button);
  try {
    return await postStep("instructions");
  } catch (error) {
    if (error instanceof ApiError) return (await api.get("state")).data;
    throw error;
  }
}

async function comprehension(state, feedback = null) {
  const c = state.content;
  const form = h("form", { class: "quiz", novalidate: true });
  c.questions.forEach((q, i) => {
    form.append(h("fieldset", { class: `question-block ${feedback && feedback.includes(i + 1) ? "wrong" : ""}` },
      h("legend", { text: `${i + 1}. ${q.text}` }),
      q.options.map((option, j) => h("label", { class: "choice" },
        h("input", { type: "radio", name: `q${i}`, value: j, required: true }), h("span", { class: "choice-text", text: option })))));
  });
  const submit = h("button", { type: "submit", class: "button primary", text: "Check my answers" });
  const hint = h("p", { class: "hint", "aria-live": "polite" });
  form.append(h("div", { class: "actions" }, submit), hint);
  screenOf("comprehension",
    h("h2", { text: "A few questions about the task" }),
    feedback ? h("p", { class: "notice", role: "alert", text: `Not quite: question ${feedback.join(", ")} ${feedback.length > 1 ? "were" : "was"} not answered right. Please read the instructions again and try again (${c.attempts_left} ${c.attempts_left === 1 ? "try" : "tries"} left).` }) : null,
    c.instructions ? h("details", { class: "reread", open: feedback ? true : undefined }, h("summary", { text: "Read the instructions again" }), paragraphs(c.instructions)) : null,
    form);
  const answers = await new Promise((resolve) => form.addEventListener("submit", (event) => {
    event.preventDefault();
    const picked = c.questions.map((_, i) => form.querySelector(`input[name="q${i}"]:checked`));
    if (picked.some((p) => !p)) { hint.textContent = "Please answer every question."; return; }
    submit.disabled = true;
    resolve(picked.map((p) => Number(p.value)));
  }));
  const result = await api.post("comprehension", { answers }, { saving: true });
  status.saved();
  if (result.status === 409) return (await api.get("state")).data;
  const reply = result.data;
  if (!reply.passed && reply.state.step === "comprehension") return comprehension(reply.state, reply.wrong_questions);
  return reply.state;
}

const INTERSTITIALS = {
  practice: ["Practice", "A few practice examples to get used to the task. After each one you will see how you did."],
  learning_output: ["Now you will see the model's answers", "Look at each example and the model's answer{aid}, and try to learn how the model decides. You will be asked to predict its answers later."],
  learning: ["Now predict the model's answer", "After each answer you will see how you did."],
  forward: ["Now predict the model's answer", "For each example, choose the answer you think the model gives. You will not be told whether you are right."],
  counterfactual_predict: ["Now predict the model's answer for changed examples", "You will see an example, the model's answer for it and a changed copy. Choose the answer you think the model gives for the changed copy."],
  counterfactual_choose: ["Now find the change that changes the model's answer", "You will see an example, the model's answer for it and several changed copies. Choose the change that makes the model give a different answer."],
};

function interstitialFor(trial) {
  let key = trial.task === "forward" ? "forward" : trial.task;
  if (trial.phase === "practice") key = "practice";
  else if (trial.phase === "learning" && trial.task === "forward") key = trial.model_output ? "learning_output" : "learning";
  const [title, text] = INTERSTITIALS[key];
  return [title, text.replace("{aid}", trial.aid ? " with an explanation" : "")];
}

async function interstitial(trial) {
  const blockKey = `studyapp:${studyId}:block`;
  let seen = null;
  try { seen = localStorage.getItem(blockKey); } catch { /* private mode */ }
  if (seen === String(trial.block)) return;
  const [title, text] = interstitialFor(trial);
  const button = h("button", { type: "button", class: "button primary", text: "Start" });
  screenOf("interstitial", h("h2", { text: title }), h("p", { class: "lead", text }), h("div", { class: "actions" }, button));
  button.focus();
  await waitClick(button);
  try { localStorage.setItem(blockKey, String(trial.block)); } catch { /* private mode */ }
}

// Sends the pending answer until the server confirms it; returns the server's reply (or null
// when the trial is not this participant's any more).
async function flushAnswer() {
  const pending = outbox.pending();
  if (!pending) return null;
  let result;
  try {
    result = await api.post(`trials/${pending.trial}/answer`, pending.body, { saving: true });
  } catch (error) {
    outbox.clear();
    if (error instanceof ApiError && error.status === 404) return null;
    throw error;
  }
  outbox.clear();
  status.saved();
  return result.status === 409 ? (result.data && result.data.stored) || null : result.data;
}

async function feedbackScreen(trial, feedback) {
  let text;
  if ("correct" in feedback) text = feedback.correct ? "Right: that is the model's answer." : "Not right: the model gave a different answer.";
  else {
    const option = trial.options.find((o) => o.value === feedback.model_output);
    text = `The model's answer: ${option ? option.label : feedback.model_output}`;
  }
  const button = h("button", { type: "button", class: "button primary", text: "Next" });
  const actions = screen.querySelector(".trial .actions");
  // Read before moving on: the verdict sits above the button that leads away from it.
  actions.before(h("p", { class: `feedback ${feedback.correct === false ? "wrong" : "right"}`, role: "status", text }));
  actions.replaceChildren(button);
  mark("feedback", trial.number);
  button.focus();
  await waitClick(button);
}

async function trials(state) {
  for (;;) {
    setProgress(state);
    let result;
    result = await api.get("trial");
    if (result.status === 409) return (await api.get("state")).data;
    const trial = result.data;
    state = { ...state, progress: { answered: trial.number - 1, total: trial.total } };
    setProgress(state);
    await interstitial(trial);
    clear(screen);
    mark("loading");
    window.scrollTo({ top: 0 });
    const answer = await showTrial(screen, trial, () => mark("trial", trial.number));
    outbox.write({ trial: trial.trial, body: { idempotency_key: newKey(), ...answer, client_sent_at: new Date().toISOString(), client: deviceInfo() } });
    const reply = await flushAnswer();
    const lookedAt = trial.task === "forward" && trial.model_output; // learning: nothing to grade
    if (reply && reply.feedback && !lookedAt) await feedbackScreen(trial, reply.feedback);
    if (trial.number >= trial.total) return (await api.get("state")).data; // the last one: on to the next step
  }
}

function likert(item, name) {
  return h("fieldset", { class: "likert" },
    h("legend", { text: item.text }),
    h("div", { class: "scale" }, [1, 2, 3, 4, 5, 6, 7].map((v) => h("label", { class: "scale-point" },
      h("input", { type: "radio", name, value: v, "aria-label": `${v} of 7${v === 1 ? `, ${item.anchors[0]}` : v === 7 ? `, ${item.anchors[1]}` : ""}` }),
      h("span", { text: String(v) })))),
    h("div", { class: "anchors", "aria-hidden": "true" }, h("span", { text: item.anchors[0] }), h("span", { text: item.anchors[1] })));
}

async function formScreen(name, title, intro, fields, collect) {
  const form = h("form", { novalidate: true });
  const submit = h("button", { type: "submit", class: "button primary", text: "Continue" });
  const hint = h("p", { class: "hint", "aria-live": "polite" });
  form.append(...fields, h("div", { class: "actions" }, submit), hint);
  screenOf(name, h("h2", { text: title }), intro ? h("p", { class: "lead", text: intro }) : null, form);
  return new Promise((resolve) => form.addEventListener("submit", (event) => {
    event.preventDefault();
    const value = collect(form);
    if (!value) { hint.textContent = "Please answer every question."; return; }
    submit.disabled = true;
    resolve(value);
  }));
}

async function questionnaire(state) {
  const items = state.content.items;
  if (!items.length) return postStep("questionnaire", { answers: {} });
  const answers = await formScreen("questionnaire", "About the task", "Please rate each statement from 1 to 7.",
    items.map((item) => likert(item, `likert-${item.id}`)),
    (form) => {
      const out = {};
      for (const item of items) {
        const picked = form.querySelector(`input[name="likert-${item.id}"]:checked`);
        if (!picked) return null;
        out[item.id] = Number(picked.value);
      }
      return out;
    });
  return postStep("questionnaire", { answers });
}

function radioGroup(legend, name, values) {
  return h("fieldset", { class: "options-list" }, h("legend", { text: legend }),
    values.map((v) => h("label", { class: "choice" }, h("input", { type: "radio", name, value: v }), h("span", { class: "choice-text", text: v }))));
}

async function demographics(state) {
  const c = state.content;
  const answers = await formScreen("demographics", "About you", "Two short questions. You can always choose \u201cprefer not to say\u201d.",
    [radioGroup("Your age", "age_band", c.age_bands), radioGroup("Your experience with machine learning", "ml_experience", c.ml_experience)],
    (form) => {
      const age = form.querySelector('input[name="age_band"]:checked');
      const ml = form.querySelector('input[name="ml_experience"]:checked');
      return age && ml ? { age_band: age.value, ml_experience: ml.value } : null;
    });
  return postStep("demographics", answers);
}

async function debrief(state) {
  const button = h("button", { type: "button", class: "button primary", text: "I have read this: finish" });
  screenOf("debrief", h("h2", { text: "About this study" }),
    state.content.text ? paragraphs(state.content.text) : h("p", { text: "Thank you for taking part." }),
    h("div", { class: "actions" }, button));
  await waitClick(button);
  return postStep("debrief");
}

const OUTCOMES = {
  completed: ["Thank you: you have finished", "Your answers are saved."],
  screened_out: ["Thank you for your time", "This study needs a clear understanding of the task, so it ends here. This is not held against you."],
  failed_checks: ["Thank you for your time", "Some of the attention questions were not answered as asked, so the study ends here."],
  withdrawn: ["You have withdrawn", "Your session has ended and your answers will not be used. You may close this page."],
};

function done(state) {
  const c = state.content;
  const [title, text] = OUTCOMES[c.outcome] || ["The study has ended", ""];
  withdrawBox.replaceChildren();
  const parts = [h("h2", { text: title }), h("p", { class: "lead", text })];
  if (c.debrief) parts.push(h("h3", { text: "About this study" }), paragraphs(c.debrief));
  if (c.code) {
    const copied = h("span", { class: "hint", "aria-live": "polite" });
    const code = h("code", { class: "completion-code", id: "completion-code", text: c.code });
    const copy = h("button", { type: "button", class: "button", text: "Copy code" });
    copy.addEventListener("click", async () => {
      try { await navigator.clipboard.writeText(c.code); copied.textContent = "Copied."; } catch {
        window.getSelection().selectAllChildren(code); copied.textContent = "Selected: press Ctrl+C (or Cmd+C) to copy.";
      }
    });
    parts.push(h("p", {}, "Your completion code: "), h("p", { class: "code-row" }, code, copy, copied));
  }
  if (c.redirect_url) {
    const link = h("a", { href: c.redirect_url, class: "button primary", text: "Return to the recruitment site now" });
    const note = h("p", { class: "hint", "aria-live": "polite" });
    parts.push(h("div", { class: "actions" }, link), note);
    let left = 5;
    const tick = () => { note.textContent = `Your answers are saved. Returning you automatically in ${left} s\u2026`; };
    tick();
    const timer = setInterval(() => { left -= 1; tick(); if (left <= 0) { clearInterval(timer); window.location.assign(c.redirect_url); } }, 1000);
  }
  screenOf("done", ...parts);
  return null;
}

function withdrawControl() {
  const open = h("button", { type: "button", class: "link-button", text: "Withdraw from the study" });
  open.addEventListener("click", () => {
    const yes = h("button", { type: "button", class: "button danger", text: "Yes, withdraw" });
    const no = h("button", { type: "button", class: "button", text: "No, go back" });
    withdrawBox.replaceChildren(h("div", { class: "confirm", role: "alertdialog", "aria-label": "Withdraw from the study?" },
      h("p", { text: "Withdraw from the study? Your session ends and your answers will not be used." }), yes, no));
    no.addEventListener("click", () => { withdrawBox.replaceChildren(open); open.focus(); });
    yes.addEventListener("click", async () => {
      yes.disabled = true;
      outbox.clear();
      await api.post("withdraw", {}, { saving: true });
      window.location.reload();
    });
    no.focus();
  });
  withdrawBox.replaceChildren(open);
}

const STEPS = { instructions, comprehension, trials, questionnaire, demographics, debrief, done };

async function run() {
  clear(root).append(h("div", { class: "progress-row" }, bar), statusLine, screen, withdrawBox);
  withdrawControl();
  await flushAnswer(); // an answer left by a closed tab, a crash or a refresh goes first
  let state = (await api.get("state")).data;
  while (state) {
    setProgress(state);
    const step = STEPS[state.step];
    if (!step) { screenOf("ended", h("h2", { text: "The study has ended" })); return; }
    state = await step(state);
  }
}

run().catch((error) => {
  const message = error instanceof ApiError && (error.status === 401 || error.status === 403)
    ? "This browser has no session for this study any more. Open the study link again."
    : `Something went wrong: ${error instanceof ApiError ? problemText(error) : error.message}. Reload the page to continue; your answers so far are saved.`;
  const reload = h("button", { type: "button", class: "button primary", text: "Reload" });
  reload.addEventListener("click", () => window.location.reload());
  screenOf("error", h("h2", { text: "Please reload" }), h("p", { role: "alert", text: message }), reload);
});
