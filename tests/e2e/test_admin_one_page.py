"""The study page in a real browser: arms and the hypotheses naming them in one save, each arm's
valid settings shown for its choices, and no serious accessibility problem on the page."""
from __future__ import annotations

from tests.e2e.conftest import axe_violations, fill_arm_row, screenshot
from tests.e2e.test_experimenter_pages import login
from tests.factories import MLModelFactory, study_with_arms


def test_a_researcher_adds_arms_and_a_hypothesis_naming_them_and_saves_once(desktop, page_errors, live_server,
                                                                             admin_user):
    from studyapp.models import Study

    model = MLModelFactory()
    page = page_errors.watch(desktop.new_page())
    login(page, live_server, admin_user)
    page.goto(f"{live_server.url}/admin/studyapp/study/add/")
    page.fill("#id_title", "Do maps help people predict a model?")
    page.select_option("#id_model", str(model.pk))
    page.select_option("#id_dataset", str(model.dataset.pk))
    page.fill("#id_consent_text", "You will predict what a computer model answers.")
    page.fill("#id_completion_code", "THANKS-1")
    for _ in range(4):
        page.get_by_text("Add another Arm").click()
    page.fill("#id_arms-0-name", "control")
    fill_arm_row(page, 1, "ig", "explanation", "integrated_gradients")
    # The row's settings help follows its method: integrated gradients' settings with defaults.
    method_help = page.locator("#arms-1 .arm-settings-help[data-settings=method]")
    method_help.get_by_text("6 valid settings").click()
    method_help.get_by_text("Steps of the path integral").wait_for()
    assert "n_steps, default 50" in method_help.inner_text()
    method_help.get_by_text("6 valid settings").click()  # closed again: it floats over the rows below
    fill_arm_row(page, 2, "saliency", "explanation", "saliency")
    fill_arm_row(page, 3, "spare")

    # The hypothesis names arms that are not saved yet.
    page.get_by_text("Add another Hypothesis").click()
    page.fill("#id_hypotheses-0-label", "H1")
    page.fill("#id_hypotheses-0-statement", "IG maps help people predict the model better than saliency maps.")
    page.select_option("#id_hypotheses-0-comparison", "arm_vs_arm")
    arm = page.locator("#id_hypotheses-0-arm_name")
    assert arm.locator("option").all_inner_texts() == ["---------", "control", "ig", "saliency", "spare"]
    arm.select_option("ig")
    page.select_option("#id_hypotheses-0-comparator_name", "saliency")
    # Renaming an arm carries the choice along; removing a row takes it out of the choices.
    page.fill("#id_arms-1-name", "ig maps")
    assert arm.input_value() == "ig maps"
    page.locator("#arms-3 .inline-deletelink").click()
    assert arm.locator("option").all_inner_texts() == ["---------", "control", "ig maps", "saliency"]
    screenshot(page, "admin-study-one-page")
    # The arm table fits a 1280 px screen: nothing on the page scrolls sideways.
    assert page.evaluate("document.querySelector('#arms-group table').getBoundingClientRect().right"
                         " <= window.innerWidth")
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")

    page.get_by_role("button", name="Save and continue editing").click()
    page.get_by_text("was added successfully").wait_for()
    study = Study.objects.get()
    hypothesis = study.hypotheses.select_related("arm", "comparator").get()
    assert (hypothesis.arm.name, hypothesis.comparator.name) == ("ig maps", "saliency")
    assert sorted(study.arms.values_list("name", flat=True)) == ["control", "ig maps", "saliency"]
    # Back on the saved page, the hypothesis shows its arms.
    assert page.locator("#id_hypotheses-0-arm_name").input_value() == "ig maps"
    assert page.locator("#id_hypotheses-0-comparator_name").input_value() == "saliency"
    page_errors.assert_none()


def test_the_settings_help_changes_with_the_rows_manipulation(desktop, page_errors, live_server, admin_user):
    study = study_with_arms()
    page = page_errors.watch(desktop.new_page())
    login(page, live_server, admin_user)
    page.goto(f"{live_server.url}/admin/studyapp/study/{study.pk}/change/")
    help_box = page.locator("#arms-1 .arm-settings-help[data-settings=manipulation]")
    help_box.get_by_text("No settings", exact=True).wait_for()
    page.select_option("#id_arms-1-manipulation", "randomized_model")
    help_box.get_by_text("3 valid settings").click()
    assert "mode, default \"cascading\"" in help_box.inner_text()
    page_errors.assert_none()


def test_the_study_add_and_change_pages_have_no_serious_accessibility_problems(desktop, page_errors, live_server,
                                                                               admin_user):
    study = study_with_arms()
    page = page_errors.watch(desktop.new_page())
    login(page, live_server, admin_user)
    problems = []
    for url in ("/admin/studyapp/study/add/", f"/admin/studyapp/study/{study.pk}/change/"):
        page.goto(live_server.url + url)
        page.get_by_text("How many items (the same items for every arm).").first.wait_for()
        if url.endswith("add/"):  # rows added by the page's script are checked too
            page.get_by_text("Add another Arm").click()
            page.get_by_text("Add another Hypothesis").click()
        problems += [f"{url}: {v}" for v in axe_violations(page)]
    assert problems == []
    page_errors.assert_none()
