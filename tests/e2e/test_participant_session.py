"""The participant's session in a real browser (Debian's Chromium), on a phone and a desktop.

Every design and trial type from consent to the completion code; nothing lost on refresh, back
button, double click, lost connection or a closed tab; nothing revealed before answering;
keyboard, no sideways scrolling and no serious accessibility problem on any screen. Screenshots
of every screen type go to tests/e2e/screens/.
"""
from __future__ import annotations

import json
import re
import time

import pytest

from studyapp.models import Participant, Response, Study, Trial
from tests.e2e.conftest import axe_violations, screenshot
from tests.e2e.walker import Walker
from tests.participation_helpers import WITHIN_DESIGN, image_study, live, live_tabular

CODES = {"completion_code": "C-OK", "screened_out_code": "C-SCREEN", "failed_checks_code": "C-FAIL"}
IMAGE_DESIGN = {**WITHIN_DESIGN, "min_instruction_seconds": 2}
# Between-subject, tabular, recruited on Prolific: practice with feedback, learning with the
# arm's bars, a forward test, an attention check, questionnaire and demographics, no confidence.
TABULAR_DESIGN = {
    "design": "between",
    "blocks": [{"phase": "practice", "n_items": 1, "feedback": "correctness"},
               {"phase": "learning", "n_items": 1, "show_model_output": True, "show_aid": True},
               {"phase": "test", "n_items": 2}],
    "attention_checks": {"count": 1}, "min_instruction_seconds": 0, "crowd": {"source": "prolific"},
    "questionnaire": [{"id": "trust", "text": "I trusted the model's answers."}],
}
PROLIFIC_PARAMS = "PROLIFIC_PID=5f0c0ffee0c0ffee0c0ffee0&STUDY_ID=s1&SESSION_ID=x1"


def image_live(prepare) -> Study:
    study = image_study(arms=[{"name": "saliency", "kind": "explanation", "method": "saliency"}])
    Study.objects.filter(pk=study.pk).update(instructions="Predict what the model answers.\n\nTake your time.")
    return live(study, prepare, IMAGE_DESIGN)


def tabular_live(prepare) -> Study:
    return live_tabular(prepare, config=TABULAR_DESIGN, **CODES)


def url(live_server, study: Study, query: str = "") -> str:
    return f"{live_server.url}/s/{study.public_id}/" + (f"?{query}" if query else "")


class ScreenChecks:
    """On the first screen of each type: a screenshot, no sideways scroll, no serious axe finding."""

    def __init__(self, page, prefix: str):
        self.page, self.prefix, self.done, self.problems = page, prefix, set(), []

    def __call__(self, seen) -> None:
        key = seen.screen + (f"-{seen.task}" if seen.task else "")
        if key in self.done:
            return
        self.done.add(key)
        screenshot(self.page, f"{self.prefix}-{key}")
        if not self.page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"):
            self.problems.append(f"{key}: the page scrolls sideways")
        size = self.page.viewport_size
        if size["width"] < 600:  # the narrowest phones in use: 360 px
            self.page.set_viewport_size({"width": 360, "height": size["height"]})
            if not self.page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"):
                self.problems.append(f"{key}: the page scrolls sideways at 360 px")
            self.page.set_viewport_size(size)
        self.problems += [f"{key}: {v}" for v in axe_violations(self.page)]


def at_first_trial(context, live_server, study: Study):
    """A new participant in ``context`` (a browser profile) at their first trial: (page, walker,
    trial number, participant)."""
    page = context.new_page()
    walker = Walker(page, quiz_answers=[1])
    walker.consent(url(live_server, study))
    number = walker.run(until="trial").trial
    return page, walker, number, Participant.objects.get(study=study)


def pending_answer(page, study: Study) -> str | None:
    """The answer the page keeps until the server confirms it (JSON text), or None."""
    return page.evaluate(f"localStorage.getItem('studyapp:{study.public_id}:pending-answer')")


def stored_once(participant: Participant) -> None:
    trials = Trial.objects.filter(participant=participant)
    assert Response.objects.filter(trial__participant=participant).count() == trials.count() == participant.n_trials
    assert not trials.filter(response__isnull=True).exists()


@pytest.mark.slow
def test_a_within_subject_image_session_runs_every_trial_type_to_the_completion_code(page_on, page_errors,
                                                                                     live_server, prepare):
    study = image_live(prepare)
    Study.objects.filter(pk=study.pk).update(**CODES)
    page = page_on
    checks = ScreenChecks(page, "image")
    walker = Walker(page, quiz_answers=[1], on_screen=checks)

    first = walker.consent(url(live_server, study))
    assert first.screen == "instructions"
    # The continue button waits out the minimum reading time, with a visible countdown.
    button = page.get_by_role("button", name=re.compile("^Continue"))
    assert button.is_disabled() and re.search(r"in \d s", button.inner_text())
    started = time.monotonic()
    end = walker.run()

    assert end.screen == "done"
    assert page.locator("#completion-code").inner_text() == "C-OK"
    screenshot(page, "image-done")
    seen = {(s.screen, s.task) for s in walker.seen}
    assert {("trial", "forward"), ("trial", "counterfactual_predict"), ("trial", "counterfactual_choose"),
            ("interstitial", None), ("comprehension", None), ("questionnaire", None), ("demographics", None),
            ("debrief", None)} <= seen
    participant = Participant.objects.get(study=study)
    assert participant.status == "completed"
    stored_once(participant)
    elapsed_ms = (time.monotonic() - started) * 1000
    device = "phone" if page.viewport_size["width"] < 600 else "desktop"
    for response in Response.objects.filter(trial__participant=participant):
        assert 0 < response.client_rt_ms < elapsed_ms  # measured in the page, from the stimulus shown
        assert response.client["device"] == device and response.client["viewport_width"] == page.viewport_size["width"]
    assert checks.problems == []
    page_errors.assert_none()


@pytest.mark.slow
def test_a_between_subject_tabular_prolific_session_ends_with_the_redirect_to_prolific(page_on, page_errors,
                                                                                      live_server, prepare):
    study = tabular_live(prepare)
    page = page_on
    page.route("https://app.prolific.com/**", lambda route: route.fulfill(status=200, body="Prolific"))
    checks = ScreenChecks(page, "tabular")
    walker = Walker(page, on_screen=checks)

    walker.consent(url(live_server, study, PROLIFIC_PARAMS))
    end = walker.run()

    assert end.screen == "done"
    assert page.locator("#completion-code").inner_text() == "C-OK"
    screenshot(page, "tabular-done")
    seen = {s.screen for s in walker.seen}
    assert {"feedback", "interstitial", "trial", "questionnaire", "demographics", "debrief"} <= seen
    # The automatic redirect, only after the answers are confirmed saved (they are, at "done").
    page.wait_for_url("https://app.prolific.com/submissions/complete?cc=C-OK", timeout=15_000)
    participant = Participant.objects.get(study=study)
    assert participant.external_id == "5f0c0ffee0c0ffee0c0ffee0"
    stored_once(participant)
    assert checks.problems == []
    page_errors.assert_none()


def test_tabular_trials_show_names_values_units_and_attribution_bars(desktop, live_server, prepare):
    study = tabular_live(prepare)
    page = desktop.new_page()
    walker = Walker(page)
    walker.consent(url(live_server, study, PROLIFIC_PARAMS))
    while True:
        seen = walker.current()
        if seen.screen == "trial" and page.locator(".model-output").count():
            break
        walker.act()
    features = page.locator("ul.features li.feature")
    assert features.count() == len(study.dataset.feature_names)
    assert features.first.locator(".feature-name").inner_text() == study.dataset.feature_names[0]
    bars = page.locator(".bar-list li")
    assert bars.count() >= 1
    values = [abs(float(v.replace("\u2212", "-"))) for v in page.locator(".bar-value").all_inner_texts()]
    assert values == sorted(values, reverse=True)  # sorted by |attribution|
    assert set(page.locator(".bar").evaluate_all("els => els.map(e => e.classList[1])")) <= {"positive", "negative"}


def test_refresh_mid_trial_resumes_at_the_same_trial_and_back_never_re_answers(phone, live_server, prepare):
    study = image_live(prepare)
    page = phone.new_page()
    walker = Walker(page, quiz_answers=[1])
    walker.consent(url(live_server, study))
    while walker.current().screen != "trial" or walker.current().trial < 3:
        walker.act()
    number = walker.current().trial
    page.reload()
    page.wait_for_selector(f'#session .screen[data-screen="trial"][data-trial="{number}"]')

    walker.act()  # answers it
    participant = Participant.objects.get(study=study)
    answered = Response.objects.filter(trial__participant=participant).count()
    assert answered == number
    page.go_back()  # leaves the session page (it keeps no history of its own)
    page.go_forward()
    page.wait_for_selector('#session .screen[data-screen]:not([data-screen="loading"])')
    now = walker.current()
    assert (now.screen, now.trial) in {("trial", number + 1), ("interstitial", None), ("feedback", number)}
    assert Response.objects.filter(trial__participant=participant).count() == answered


def test_a_double_click_stores_one_answer(desktop, live_server, prepare):
    study = image_live(prepare)
    page = desktop.new_page()
    walker = Walker(page, quiz_answers=[1])
    walker.consent(url(live_server, study))
    while walker.current().screen != "trial" or not page.locator("fieldset.choices").count():
        walker.act()
    number = walker.current().trial
    form = page.locator("form.trial")
    form.locator("fieldset.choices label.choice").first.click()
    if form.locator("fieldset.confidence").count():
        form.locator("fieldset.confidence .scale-point").nth(2).click()
    form.get_by_role("button", name="Submit answer").dblclick()
    walker.wait_past(number)
    participant = Participant.objects.get(study=study)
    assert Response.objects.filter(trial__participant=participant).count() == number


def test_an_answer_sent_while_offline_is_kept_shown_as_unsaved_and_stored_once_when_back_online(
        phone, live_server, prepare):
    study = image_live(prepare)
    page, walker, number, participant = at_first_trial(phone, live_server, study)

    phone.set_offline(True)
    walker.answer(number)
    status = page.locator(".save-status")
    status.filter(has_text="offline").wait_for(timeout=10_000)
    assert status.get_attribute("aria-live") == "polite"
    assert walker.current().trial == number  # the participant cannot move on with unsaved work
    pending = json.loads(pending_answer(page, study))
    assert Response.objects.filter(trial__participant=participant).count() == number - 1

    phone.set_offline(False)
    walker.wait_past(number)
    stored = Response.objects.get(trial__participant=participant, trial__position=number - 1)
    assert str(stored.idempotency_key) == pending["body"]["idempotency_key"]
    assert Response.objects.filter(trial__participant=participant).count() == number
    assert pending_answer(page, study) is None


def test_an_answer_left_unsent_by_a_closed_tab_is_sent_once_when_the_session_is_opened_again(
        desktop, live_server, prepare):
    study = image_live(prepare)
    page, walker, number, participant = at_first_trial(desktop, live_server, study)
    page.route("**/answer", lambda route: route.abort())  # the server never hears it
    walker.answer(number)
    page.locator(".save-status.retrying").wait_for()
    page.close(run_before_unload=False)
    assert Response.objects.filter(trial__participant=participant).count() == number - 1

    again = desktop.new_page()  # same browser profile: cookies and localStorage
    again.goto(f"{live_server.url}/s/{study.public_id}/session/")
    Walker(again).wait_past(number)
    assert Response.objects.filter(trial__participant=participant).count() == number


def test_before_answering_nothing_the_page_holds_or_loaded_reveals_the_output_or_the_truth(desktop, live_server,
                                                                                          prepare):
    study = image_live(prepare)
    page = desktop.new_page()
    bodies: list[tuple[str, str, dict]] = []

    def keep(response):
        if "/api/participate/" in response.url:
            body = response.body()
            bodies.append((response.url, response.headers.get("content-type", ""), dict(response.headers),
                           body if "json" in response.headers.get("content-type", "") else b""))
    page.on("response", keep)
    walker = Walker(page, quiz_answers=[1])
    walker.consent(url(live_server, study))
    participant = Participant.objects.get(study=study)
    checked = 0
    while walker.current().screen != "done":
        seen = walker.current()
        if seen.screen == "trial":
            trial = Trial.objects.get(participant=participant, position=seen.trial - 1)
            if trial.phase in ("pre_test", "post_test") and trial.task == "forward":
                checked += 1
                dom = page.locator("#session").inner_text()
                assert "model's answer" not in dom and page.locator(".model-output, .aid").count() == 0
                trial_json = [json.loads(b) for u, _, _, b in bodies if u.endswith("/trial") and b]
                assert trial_json[-1]["trial"] == str(trial.public_id)
                assert trial_json[-1]["model_output"] is None and trial_json[-1]["aid"] is None
                for key in ("expected_answer", "correct", "truth", "label\": \"" + str(trial.stimulus.label)):
                    assert key not in json.dumps(trial_json[-1])
                images = page.locator("#session img").evaluate_all("els => els.map(e => e.getAttribute('src'))")
                assert images and all(re.fullmatch(rf"/api/participate/{study.public_id}/media/[0-9a-f-]{{36}}/input", s)
                                      for s in images)
        walker.act()
    assert checked == 4  # two pre-test and two post-test items
    for url_, _, headers, _ in bodies:
        assert "content-disposition" not in headers, url_
        assert headers.get("cache-control", "").startswith("no-store"), url_
    storage = page.evaluate("JSON.stringify(Object.assign({}, localStorage))")
    assert "model_output" not in storage and "expected" not in storage


def test_keyboard_alone_takes_a_trial_numbers_choose_and_enter_submits(desktop, live_server, prepare):
    study = tabular_live(prepare)
    page = desktop.new_page()
    walker = Walker(page)
    walker.consent(url(live_server, study, PROLIFIC_PARAMS))
    while walker.current().screen != "trial" or not page.locator("fieldset.choices").count():
        walker.act()
    number = walker.current().trial
    page.keyboard.press("2")
    assert page.locator("fieldset.choices input").nth(1).is_checked()
    assert page.evaluate("document.activeElement.name").startswith("answer-")  # visible focus on the choice
    page.keyboard.press("Enter")
    walker.wait_past(number)
    participant = Participant.objects.get(study=study)
    assert Response.objects.get(trial__participant=participant, trial__position=number - 1).answer == 1


def test_failing_the_quiz_up_to_its_cap_ends_politely_with_the_screened_out_code(phone, live_server, prepare):
    study = image_live(prepare)
    Study.objects.filter(pk=study.pk).update(**CODES)
    page = phone.new_page()
    walker = Walker(page, quiz_answers=[0])  # wrong every time (max_attempts 2)
    walker.consent(url(live_server, study))
    end = walker.run()
    assert end.screen == "done" and [s.screen for s in walker.seen].count("comprehension") == 2
    assert "not held against you" in page.locator("#session").inner_text()
    assert page.locator("#completion-code").inner_text() == "C-SCREEN"
    screenshot(page, "screened-out")


def test_withdrawing_ends_the_session_after_a_confirmation(phone, live_server, prepare):
    study = tabular_live(prepare)
    page = phone.new_page()
    walker = Walker(page)
    walker.consent(url(live_server, study, PROLIFIC_PARAMS))
    page.get_by_role("button", name="Withdraw from the study").click()
    page.get_by_role("button", name="Yes, withdraw").click()
    page.wait_for_selector('#session .screen[data-screen="done"]')
    assert "You have withdrawn" in page.locator("#session").inner_text()
    assert study.debrief_text in page.locator("#session").inner_text()  # debriefed all the same
    assert Participant.objects.get(study=study).status == "withdrawn"


def test_when_the_script_cannot_load_the_page_still_says_what_to_do(phone, live_server, prepare):
    study = tabular_live(prepare)
    page = phone.new_page()
    page.route("**/participant/session.js", lambda route: route.abort())
    Walker(page).page.goto(url(live_server, study, PROLIFIC_PARAMS))
    page.get_by_role("button", name="I agree to take part").click()
    page.wait_for_load_state()
    text = page.locator("main").inner_text()
    assert "please reload the page" in text and "blocking the scripts" in text


TABULAR_COUNTERFACTUAL_DESIGN = {
    "blocks": [{"phase": "learning", "n_items": 1, "show_model_output": True, "show_aid": True},
               {"phase": "test", "task": "counterfactual_predict", "n_items": 1, "show_aid": True},
               {"phase": "test", "task": "counterfactual_choose", "n_items": 1, "show_aid": True}],
    "counterfactual_options": 3, "min_instruction_seconds": 0, "questionnaire": [], "demographics": False,
}


def breast_cancer_live(prepare) -> Study:
    """The demo's breast-cancer data and MLP (real feature names, units and descriptions), with a
    small counterfactual design and one explanation arm."""
    import dataclasses

    from studyapp.services.datasets import dataset_import_builtin
    from studyapp.services.demo import DEMOS, DemoResult, demo_model, demo_study

    spec = dataclasses.replace(DEMOS[1], slug="e2e-breast-cancer", design=TABULAR_COUNTERFACTUAL_DESIGN,
                               arms=DEMOS[1].arms[:1], outcome="counterfactual_accuracy")
    dataset = dataset_import_builtin(which=spec.builtin)
    result = DemoResult()
    model = demo_model(spec=spec, dataset=dataset, result=result)
    study = demo_study(spec=spec, model=model, dataset=dataset, result=result)
    assert study.state == Study.State.LIVE, study.preparation
    return study


@pytest.mark.slow
def test_tabular_counterfactual_trials_show_the_changed_feature_and_each_offered_change(page_on, page_errors,
                                                                                       live_server):
    study = breast_cancer_live(None)
    page = page_on
    checks = ScreenChecks(page, "tabular-cf")
    shown: dict[str, dict] = {}

    def look(seen) -> None:
        checks(seen)
        if seen.screen == "trial" and seen.task in ("counterfactual_predict", "counterfactual_choose"):
            shown[seen.task] = {
                "changed": page.locator("li.feature.changed").all_inner_texts(),
                "summary": page.locator(".edit-summary").all_inner_texts(),
                "choices": page.locator("fieldset.choices .choice-text").all_inner_texts(),
                "model_output": page.locator(".model-output").inner_text(),
                "units": page.locator(".feature-value").all_inner_texts(),
            }
    walker = Walker(page, quiz_answers=[1, 1], on_screen=look)
    walker.consent(url(live_server, study))
    assert walker.run().screen == "done"

    predict, choose = shown["counterfactual_predict"], shown["counterfactual_choose"]
    names = study.dataset.feature_names
    # Predict: the changed feature is highlighted in the table with its old -> new value, and summarised.
    assert len(predict["changed"]) == 1 and "\u2192" in predict["changed"][0]
    assert any(name in predict["changed"][0] for name in names)
    assert predict["summary"] and predict["summary"][0].startswith("Changed:")
    assert predict["model_output"].startswith("The model's answer for the original example")
    units = {d.get("unit") for d in study.dataset.feature_descriptions.values()} - {""}
    assert units and any(any(u in text for u in units) for text in predict["units"])
    # Choose: K changes, each naming its feature and values.
    assert len(choose["choices"]) == 3 and all(t.startswith("Change ") and " from " in t for t in choose["choices"])
    assert checks.problems == []
    page_errors.assert_none()
