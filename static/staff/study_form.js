// The study page's arms and hypotheses, edited together (a static file: the admin's CSP allows no
// inline script). Served to the admin by studyapp/admin/arms.py.
//
// 1. A hypothesis names its arm and comparator by name: the choices are the arm rows on the page,
//    saved or not, kept in step as arms are added, renamed, marked for deletion or removed. A
//    choice follows its row through a rename. The server checks the names against the arm rows
//    of the same POST and resolves them after saving the arms.
// 2. Under each arm's settings boxes: the valid settings of the method and manipulation chosen in
//    that row (panels rendered by the server as <template id="arm-settings-WHICH-CHOICE">).
(() => {
  "use strict";

  const ARM_ROWS = "#arms-group tr.form-row:not(.empty-form)";
  const field = (row, name) => row.querySelector(`[name$="-${name}"]`);
  const nameOf = (row) => (field(row, "name")?.value ?? "").trim();
  const deleted = (row) => field(row, "DELETE")?.checked ?? false;
  const armRows = () => [...document.querySelectorAll(ARM_ROWS)].filter((row) => !deleted(row) && nameOf(row));
  const armChoices = () => [...document.querySelectorAll("#hypotheses-group select[data-arm-choice]")]
    .filter((select) => !select.closest(".empty-form"));

  // select -> the arm row it names (null: none), so that a rename carries the choice along.
  const chosenRow = new WeakMap();

  function refreshArmChoices() {
    const rows = armRows();
    for (const select of armChoices()) {
      if (!chosenRow.has(select)) {
        chosenRow.set(select, rows.find((row) => nameOf(row) === select.value) ?? null);
      }
      const chosen = chosenRow.get(select);
      const options = rows.map((row) => new Option(nameOf(row), nameOf(row), false, row === chosen));
      select.replaceChildren(new Option("---------", ""), ...options);
      if (!rows.includes(chosen)) select.value = "";
    }
  }

  function settingsChoice(row, which) {
    const value = (name) => field(row, name)?.value ?? "";
    if (which === "manipulation") return value("manipulation") || "none";
    const kind = value("kind");
    return kind === "control" || kind === "ood_warning" ? kind : value("method") || "unset";
  }

  function refreshSettingsHelp(row) {
    for (const panel of row.querySelectorAll(".arm-settings-help")) {
      const choice = settingsChoice(row, panel.dataset.settings);
      if (panel.dataset.choice === choice) continue;
      const template = document.getElementById(`arm-settings-${panel.dataset.settings}-${choice}`);
      panel.replaceChildren(template ? template.content.cloneNode(true) : "");
      panel.dataset.choice = choice;
    }
  }

  document.addEventListener("input", (event) => {
    if (event.target.matches(`${ARM_ROWS} input[name$="-name"]`)) refreshArmChoices();
  });
  document.addEventListener("change", (event) => {
    const target = event.target;
    if (target.matches("select[data-arm-choice]")) {
      chosenRow.set(target, armRows().find((row) => nameOf(row) === target.value) ?? null);
    } else if (target.matches(`${ARM_ROWS} input[name$="-DELETE"]`)) {
      refreshArmChoices();
    } else if (target.matches(`${ARM_ROWS} select`)) {
      refreshSettingsHelp(target.closest("tr"));
    }
  });
  // Rows added and removed by the admin's inlines.js.
  document.addEventListener("formset:added", (event) => {
    if (event.detail?.formsetName === "arms") refreshSettingsHelp(event.target);
    refreshArmChoices();
  });
  document.addEventListener("formset:removed", refreshArmChoices);

  const start = () => {
    refreshArmChoices();
    document.querySelectorAll(ARM_ROWS).forEach(refreshSettingsHelp);
  };
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
