"""Smoke test: the participant landing page in a real browser, on a phone and on a desktop."""
from __future__ import annotations

from tests.e2e.conftest import axe_violations, screenshot
from tests.participation_helpers import live_tabular


def test_the_landing_page_of_a_live_study_works_on_phone_and_desktop(page_on, page_errors, live_server, prepare):
    study = live_tabular(prepare)
    page = page_on

    response = page.goto(f"{live_server.url}/s/{study.public_id}/")

    assert response.status == 200
    assert page.get_by_role("button", name="I agree to take part").is_visible()
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), "the page scrolls sideways"
    screenshot(page, "landing")
    assert axe_violations(page) == []
    page_errors.assert_none()


def test_the_admin_and_the_staff_report_show_no_csp_violations(desktop, page_errors, live_server, admin_user, prepare):
    study = live_tabular(prepare)
    page = page_errors.watch(desktop.new_page())
    page.goto(f"{live_server.url}/admin/login/")
    page.fill("#id_username", admin_user.username)
    page.fill("#id_password", "password")  # pytest-django's admin_user
    page.click("input[type=submit]")
    page.wait_for_url("**/admin/")

    for path in ["/admin/", f"/admin/studyapp/study/{study.pk}/change/", f"/staff/studies/{study.pk}/report/",
                 "/staff/planner/"]:
        assert page.goto(live_server.url + path).status == 200, path
    page_errors.assert_none()
