"""Experimenter screens in a real browser: the study design as a form, under the admin's CSP."""
from __future__ import annotations

from tests.e2e.conftest import fill_arm_row, screenshot
from tests.factories import study_with_arms


def login(page, live_server, admin_user) -> None:
    page.goto(f"{live_server.url}/admin/login/")
    page.fill("#id_username", admin_user.username)
    page.fill("#id_password", "password")  # pytest-django's admin_user
    page.click("input[type=submit]")
    page.wait_for_url("**/admin/")


def test_the_study_design_is_a_form_and_saving_it_keeps_a_valid_design(desktop, page_errors, live_server,
                                                                        admin_user):
    study = study_with_arms()
    page = page_errors.watch(desktop.new_page())
    login(page, live_server, admin_user)
    page.goto(f"{live_server.url}/admin/studyapp/study/{study.pk}/change/")
    # The design's settings are form fields with their descriptions, not a JSON box.
    page.get_by_text("How many items (the same items for every arm).").first.wait_for()
    assert page.locator("textarea[name=config]").is_hidden()
    screenshot(page, "admin-study-design")
    page.get_by_role("button", name="Save and continue editing").click()
    page.wait_for_load_state()
    study.refresh_from_db()
    assert study.config["blocks"][0]["phase"] == "learning" and study.config["blocks"][1]["n_items"] == 3
    # Defaults in effect were shown and kept (not emptied): the standard questionnaire stays.
    assert [q["id"] for q in study.config["questionnaire"]] == ["trust", "helpfulness", "understanding"]
    assert "Before this study can be prepared" not in page.content()
    page_errors.assert_none()


def test_a_full_design_round_trips_through_the_form_unchanged(desktop, page_errors, live_server, admin_user):
    from studyapp.design import design_parse
    from studyapp.models import Study
    from studyapp.services.demo import DIGITS_DESIGN

    study = study_with_arms()
    design = {**DIGITS_DESIGN, "crowd": {"source": "prolific"}, "edits": {"grid": [2, 2]},
              "questionnaire": [{"id": "trust", "text": "I trusted it.", "anchors": ["No", "Yes"]}]}
    Study.objects.filter(pk=study.pk).update(config=design)
    page = page_errors.watch(desktop.new_page())
    login(page, live_server, admin_user)
    page.goto(f"{live_server.url}/admin/studyapp/study/{study.pk}/change/")
    page.get_by_text("How many items (the same items for every arm).").first.wait_for()
    page.get_by_role("button", name="Save and continue editing").click()
    page.wait_for_load_state()
    study.refresh_from_db()
    assert design_parse(study.config) == design_parse(design)
    assert study.config["exclusion_rules"]["total_seconds_window"] == [120, 3600]
    page_errors.assert_none()


def test_the_launch_review_reads_as_a_plan_and_launches_after_confirmation(desktop, page_errors, live_server,
                                                                         admin_user, prepare):
    from studyapp.models import Study

    study = prepare(study_with_arms())
    page = page_errors.watch(desktop.new_page())
    login(page, live_server, admin_user)
    page.goto(f"{live_server.url}/admin/studyapp/study/{study.pk}/launch/")
    assert page.get_by_role("heading", name="Hypotheses").is_visible()
    screenshot(page, "admin-launch-review")
    page.get_by_label("I have read this plan").check()
    page.get_by_role("button", name="Launch: freeze this plan and open the study").click()
    page.get_by_text("It cannot change; changes are recorded as dated deviations.").wait_for()
    study.refresh_from_db()
    assert study.state == Study.State.LIVE and study.frozen_sha256 in page.content()
    screenshot(page, "admin-frozen-plan")
    page_errors.assert_none()


def test_the_live_monitor_changes_without_reloading_as_participants_arrive(desktop, page_errors, live_server,
                                                                         admin_user, prepare):
    from django.test import Client

    from tests.participation_helpers import enroll, live_tabular

    study = live_tabular(prepare)
    page = page_errors.watch(desktop.new_page())
    login(page, live_server, admin_user)
    page.goto(f"{live_server.url}/admin/studyapp/study/{study.pk}/monitor/")
    page.get_by_text("0 real participants").first.wait_for()
    for _ in range(2):
        assert enroll(Client(), study).status_code == 201
    page.locator("#monitor").get_by_text("2 real participants").wait_for(timeout=15_000)  # polled, no reload
    screenshot(page, "admin-live-monitor")
    page.get_by_role("button", name="Pause new participants (all arms)").click()
    page.get_by_text("New participants paused for the study.").wait_for()
    page_errors.assert_none()


def test_the_arm_gallery_shows_real_and_placebo_maps_side_by_side(desktop, page_errors, live_server, admin_user,
                                                                  prepare):
    from tests.participation_helpers import WITHIN_DESIGN, image_study, live

    study = live(image_study(arms=[{"name": "saliency", "kind": "explanation", "method": "saliency"},
                                   {"name": "saliency_random", "kind": "explanation", "method": "saliency",
                                    "manipulation": "random_matched"}]), prepare, WITHIN_DESIGN)
    page = page_errors.watch(desktop.new_page())
    login(page, live_server, admin_user)
    page.goto(f"{live_server.url}/admin/studyapp/study/{study.pk}/gallery/")
    images = page.locator("#content img")
    assert images.count() > 6
    assert page.evaluate("[...document.querySelectorAll('#content img')].every(i => i.complete && i.naturalWidth > 0)")
    screenshot(page, "admin-arm-gallery")
    page_errors.assert_none()


def test_the_report_reads_at_phone_width_without_sideways_scrolling(phone, page_errors, live_server, admin_user):
    from tests.export_factories import exported_study

    data = exported_study(with_run=True)
    page = page_errors.watch(phone.new_page())
    login(page, live_server, admin_user)
    page.goto(f"{live_server.url}/staff/studies/{data.study.pk}/report/")
    page.get_by_text("Confirmatory analysis").first.wait_for()
    screenshot(page, "staff-report")
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), "the report scrolls sideways"
    page_errors.assert_none()


def test_each_arm_can_be_previewed_through_the_real_pages_and_nothing_is_kept_as_data(
        desktop, page_errors, live_server, admin_user, prepare):
    from studyapp.exports.rows import participant_rows
    from tests.e2e.walker import Walker
    from tests.participation_helpers import live_tabular

    study = live_tabular(prepare)
    page = page_errors.watch(desktop.new_page())
    login(page, live_server, admin_user)
    for arm in study.arms.order_by("position"):
        page.goto(f"{live_server.url}/admin/studyapp/study/{study.pk}/preview/")
        page.get_by_role("button", name=f"Preview as a participant in {arm.name}").click()
        page.wait_for_selector('#session .screen[data-screen]:not([data-screen="loading"])')
        walker = Walker(page)
        assert walker.run().screen == "done"
        assert any(s.screen == "trial" for s in walker.seen)
    screenshot(page, "admin-preview-done")
    assert list(participant_rows(study=study, items=[])) == []
    page_errors.assert_none()


def test_a_researcher_builds_a_study_from_scratch_through_the_forms_and_launches_it(
        desktop, page_errors, live_server, admin_user, django_capture_on_commit_callbacks):
    from studyapp.models import Study
    from tests.factories import MLModelFactory, StimulusFactory

    model = MLModelFactory()
    StimulusFactory.create_batch(8, dataset=model.dataset, split="test")
    StimulusFactory.create_batch(4, dataset=model.dataset, split="train")
    page = page_errors.watch(desktop.new_page())
    login(page, live_server, admin_user)
    page.goto(f"{live_server.url}/admin/studyapp/study/add/")
    page.fill("#id_title", "Do maps help people predict a model?")
    page.select_option("#id_model", str(model.pk))
    page.select_option("#id_dataset", str(model.dataset.pk))
    page.fill("#id_consent_text", "You will predict what a computer model answers.")
    page.fill("#id_completion_code", "THANKS-1")
    # The design form starts on a design that runs; the test block gets 3 items (the pool is small).
    page.locator('[name="rjf§blocks§0§n_items"]').fill("2")
    page.locator('[name="rjf§blocks§1§n_items"]').fill("3")
    # Arms: control and integrated gradients.
    page.get_by_text("Add another Arm").click()
    page.get_by_text("Add another Arm").click()
    fill_arm_row(page, 0, "control", "control")
    fill_arm_row(page, 1, "ig", "explanation", "integrated_gradients")
    # The hypothesis names the arms before they are saved: one save stores everything.
    page.get_by_text("Add another Hypothesis").click()
    page.fill("#id_hypotheses-0-label", "H1")
    page.fill("#id_hypotheses-0-statement", "Participants shown IG maps predict the model better than control.")
    page.select_option("#id_hypotheses-0-arm_name", "ig")
    page.get_by_role("button", name="Save and continue editing").click()
    page.get_by_text("was added successfully").wait_for()
    assert "Before this study can be prepared" not in page.content()
    screenshot(page, "admin-study-built")
    study = Study.objects.get()
    assert [(b["phase"], b["n_items"]) for b in study.config["blocks"]] == [("learning", 2), ("test", 3)]
    # Prepare from the study list, then review and launch.
    page.goto(f"{live_server.url}/admin/studyapp/study/")
    page.locator(f'input[name="_selected_action"][value="{study.pk}"]').check()
    page.select_option('select[name="action"]', "prepare")
    page.locator("button[name=index]").click()
    page.get_by_text("preparation started").wait_for()
    study.refresh_from_db()
    assert study.state == Study.State.READY, study.preparation
    page.goto(f"{live_server.url}/admin/studyapp/study/{study.pk}/launch/")
    page.get_by_label("I have read this plan").check()
    page.get_by_role("button", name="Launch: freeze this plan and open the study").click()
    page.get_by_text("It cannot change; changes are recorded as dated deviations.").wait_for()
    study.refresh_from_db()
    assert study.state == Study.State.LIVE and study.frozen_config["hypotheses"][0]["label"] == "H1"
    page_errors.assert_none()


def test_preparation_progress_updates_on_the_study_and_report_pages_without_reloading(desktop, page_errors,
                                                                                    live_server, admin_user):
    from studyapp.models import Study
    from studyapp.services.preparation import preparation_plan, study_run_preparation

    study = study_with_arms()
    Study.objects.filter(pk=study.pk).update(state="preparing")
    preparation_plan(study=study)  # stored, not run yet: as when the workers have not started on it
    page = page_errors.watch(desktop.new_page())
    login(page, live_server, admin_user)
    report = page_errors.watch(desktop.new_page())
    page.goto(f"{live_server.url}/admin/studyapp/study/{study.pk}/change/")
    report.goto(f"{live_server.url}/staff/studies/{study.pk}/report/")
    for p in (page, report):
        p.locator("#preparation-progress").get_by_text("Preparing: 0 of 2 units done").wait_for()
    screenshot(page, "admin-preparation-progress")
    study_run_preparation(study_id=study.pk)  # a worker does the work meanwhile
    for p in (page, report):
        p.locator("#preparation-progress").get_by_text("Prepared: ").wait_for(timeout=15_000)  # polled, no reload
    assert "Item sample" in report.locator("#preparation-progress").inner_text()
    page_errors.assert_none()
