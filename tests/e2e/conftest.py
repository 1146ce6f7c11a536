"""Browser tests: Playwright's sync API driving Debian's chromium (/usr/bin/chromium, from
`make system-deps`; never `playwright install`) against pytest-django's ``live_server``.

Fixtures
- ``browser``: one headless chromium for the session. Skipped when /usr/bin/chromium is missing,
  and failed instead when CI=true (a green CI must never hide skipped browser tests).
- ``desktop`` / ``phone``: a fresh BrowserContext (1280x800; 390x844 touch phone at 3x), closed after.
- ``page_on``: parametrized over ("phone", "desktop"): a Page in a fresh context of that viewport,
  already watched by ``page_errors``.
- ``page_errors``: an ErrorLog of console errors, uncaught page errors and CSP violations;
  ``page_errors.watch(page)`` for pages of your own, ``page_errors.assert_none()`` at the end.

Helpers
- ``screenshot(page, name) -> Path``: tests/e2e/screens/<name>-<viewport>.png (git-ignored).
- ``axe_violations(page, context=None) -> list[str]``: serious and critical axe-core violations,
  one readable line each (axe-core runs inside the page; nothing is downloaded).

Every test under tests/e2e carries the ``browser`` marker (``-m "not browser"`` leaves them out).
Tests that use ``live_server`` get ``transactional_db`` (pytest-django adds it): what the test
writes is committed, so the server thread sees it.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# Playwright's sync API runs an asyncio event loop in the test thread; Django would otherwise refuse
# database access from the test ("You cannot call this from an async context").
os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
E2E_DIR = Path(__file__).resolve().parent
SCREENS_DIR = E2E_DIR / "screens"

VIEWPORTS: dict[str, dict] = {
    "desktop": {"viewport": {"width": 1280, "height": 800}},
    "phone": {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True,
              "device_scale_factor": 3},
}
SERIOUS_IMPACTS = ("serious", "critical")


def pytest_collection_modifyitems(config, items):
    # This hook sees every collected item of the run, not only this folder's: mark ours only.
    for item in items:
        if E2E_DIR in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.browser)


@pytest.fixture(scope="session")
def browser():
    if not os.access(CHROMIUM, os.X_OK):
        problem = f"{CHROMIUM} is missing: install Debian's chromium package (make system-deps)"
        if IN_CI:
            pytest.fail(f"{problem}; CI=true, so the browser tests fail instead of skipping.", pytrace=False)
        pytest.skip(problem)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def _context(browser, viewport: str):
    return browser.new_context(**VIEWPORTS[viewport])


@pytest.fixture
def desktop(browser):
    context = _context(browser, "desktop")
    yield context
    context.close()


@pytest.fixture
def phone(browser):
    context = _context(browser, "phone")
    yield context
    context.close()


class ErrorLog:
    """Console errors, uncaught page errors and Content-Security-Policy violations of watched pages."""

    # Runs in every document of a watched page before its own scripts: a CSP violation is also
    # reported as a console error, whatever the browser itself logs for it.
    _CSP_LISTENER = """
    document.addEventListener("securitypolicyviolation", (e) => {
      console.error(`CSP violation: ${e.violatedDirective} blocked ${e.blockedURI || "inline"}`
                    + ` at ${e.sourceFile || e.documentURI}:${e.lineNumber}`);
    });
    """

    # Browsers ask for /favicon.ico on their own; the site has none yet, and that 404 says nothing
    # about the page under test.
    IGNORED_URL_SUFFIXES = ("/favicon.ico",)

    def __init__(self) -> None:
        self.messages: list[str] = []

    def watch(self, page):
        """Start collecting from ``page`` (call before page.goto); returns the page."""
        page.add_init_script(self._CSP_LISTENER)
        page.on("console", lambda msg: self._console(page, msg))
        page.on("pageerror", lambda error: self.messages.append(f"page error on {page.url}: {error}"))
        return page

    def _console(self, page, msg) -> None:
        if msg.type == "error":
            location = msg.location or {}
            where = location.get("url") or page.url
            if where.endswith(self.IGNORED_URL_SUFFIXES):
                return
            self.messages.append(f"console error on {where}: {msg.text}")

    def assert_none(self) -> None:
        assert not self.messages, "Errors in the browser:\n" + "\n".join(self.messages)


@pytest.fixture
def page_errors():
    return ErrorLog()


@pytest.fixture(params=["phone", "desktop"])
def page_on(request, browser, page_errors):
    """A new Page in a fresh context of the parametrized viewport ("phone" or "desktop")."""
    context = _context(browser, request.param)
    try:
        yield page_errors.watch(context.new_page())
    finally:
        context.close()


def viewport_name(page) -> str:
    size = page.viewport_size or {}
    for name, options in VIEWPORTS.items():
        if options["viewport"] == size:
            return name
    return f"{size.get('width')}x{size.get('height')}"


def screenshot(page, name: str) -> Path:
    """Save a full-page screenshot as tests/e2e/screens/<name>-<viewport>.png and return its path."""
    SCREENS_DIR.mkdir(parents=True, exist_ok=True)
    path = SCREENS_DIR / f"{name}-{viewport_name(page)}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def axe_violations(page, context=None) -> list[str]:
    """Serious and critical axe-core violations on the page as it is now, one line each:
    "<rule id> (<impact>): <help> at <first targets>"."""
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page, context=context)
    lines = []
    for violation in results.response["violations"]:
        if violation.get("impact") not in SERIOUS_IMPACTS:
            continue
        targets = [" ".join(map(str, node.get("target", []))) for node in violation.get("nodes", [])[:3]]
        more = len(violation.get("nodes", [])) - len(targets)
        lines.append(f"{violation['id']} ({violation['impact']}): {violation['help']} at "
                     f"{', '.join(targets)}{f' and {more} more' if more > 0 else ''}")
    return lines


def fill_arm_row(page, index: int, name: str, kind: str | None = None, method: str | None = None) -> None:
    """Fill row ``index`` of the study page's arm table (added with "Add another Arm")."""
    page.fill(f"#id_arms-{index}-name", name)
    if kind:
        page.select_option(f"#id_arms-{index}-kind", kind)
    if method:
        page.select_option(f"#id_arms-{index}-method", method)
