"""Takes a study as a participant would, screen by screen, in a real browser page.

The session page names each screen (``data-screen`` on ``#session .screen``, with a counter in
``data-shown`` that changes with every screen): the walker acts on the screen it sees, the way a
person would (clicks, keys), then waits for the next one.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

SCREEN = "#session .screen"
WAIT_NEXT = """(shown) => { const el = document.querySelector('#session .screen');
  return el && el.dataset.shown && el.dataset.shown !== shown && el.dataset.screen !== 'loading'; }"""


@dataclass
class Seen:
    screen: str
    trial: int | None = None
    task: str | None = None


@dataclass
class Walker:
    page: object
    quiz_answers: list[int] | None = None
    # trial number -> option index (default: the first option)
    choose: Callable[[int], int] = lambda number: 0
    confidence: int = 4
    on_screen: Callable[[Seen], None] | None = None
    seen: list[Seen] = field(default_factory=list)

    def consent(self, url: str) -> Seen:
        self.page.goto(url)
        self.page.get_by_role("button", name="I agree to take part").click()
        self.page.wait_for_function(WAIT_NEXT, arg="")
        return self.current()

    def current(self) -> Seen:
        el = self.page.locator(SCREEN)
        trial = el.get_attribute("data-trial")
        task = None
        if trial:
            form = self.page.locator("form.trial .stage")
            task = next((t for t in ("counterfactual_predict", "counterfactual_choose", "forward")
                         if t in (form.get_attribute("class") or "")), None)
        return Seen(el.get_attribute("data-screen"), int(trial) if trial else None, task)

    def wait_past(self, number: int, timeout: float = 30_000) -> None:
        """Until trial ``number`` is answered and saved: its feedback or a later screen shows (under the page's CSP, a
        function: Playwright evaluates a bare expression string with eval, which CSP forbids)."""
        self.page.wait_for_function(
            """(n) => { const el = document.querySelector('#session .screen');
              if (!el || !el.dataset.screen || el.dataset.screen === 'loading') return false;  // not drawn yet
              return el.dataset.screen !== 'trial' || Number(el.dataset.trial) > n; }""", arg=number, timeout=timeout)

    def shown(self) -> str:
        return self.page.locator(SCREEN).get_attribute("data-shown") or ""

    def act(self) -> Seen:
        """Do what the current screen asks, wait for the next screen and return it."""
        seen = self.current()
        self.seen.append(seen)
        if self.on_screen:
            self.on_screen(seen)
        before = self.shown()
        page = self.page
        if seen.screen == "instructions":
            page.get_by_role("button", name="Continue").click(timeout=60_000)
        elif seen.screen == "comprehension":
            answers = self.quiz_answers or []
            for i, block in enumerate(page.locator("form.quiz fieldset").all()):
                block.locator("label.choice").nth(answers[i] if i < len(answers) else 0).click()
            page.get_by_role("button", name="Check my answers").click()
        elif seen.screen == "interstitial":
            page.get_by_role("button", name="Start").click()
        elif seen.screen == "trial":
            self.answer(seen.trial)
        elif seen.screen == "feedback":
            page.get_by_role("button", name="Next").click()
        elif seen.screen == "questionnaire":
            for scale in page.locator("fieldset.likert").all():
                scale.locator(".scale-point").nth(3).click()
            page.get_by_role("button", name="Continue").click()
        elif seen.screen == "demographics":
            for group in page.locator("fieldset.options-list").all():
                group.locator("label.choice").last.click()
            page.get_by_role("button", name="Continue").click()
        elif seen.screen == "debrief":
            page.get_by_role("button", name="I have read this: finish").click()
        else:
            raise AssertionError(f"no action for screen {seen.screen!r}")
        page.wait_for_function(WAIT_NEXT, arg=before, timeout=60_000)
        return self.current()

    def answer(self, number: int) -> None:
        form = self.page.locator("form.trial")
        if form.get_by_role("button", name="Continue").count():
            form.get_by_role("button", name="Continue").click()
            return
        form.locator("fieldset.choices label.choice").nth(self.choose(number)).click()
        if form.locator("fieldset.confidence").count():
            form.locator("fieldset.confidence .scale-point").nth(self.confidence - 1).click()
        form.get_by_role("button", name="Submit answer").click()

    def run(self, until: str = "done", max_steps: int = 400) -> Seen:
        seen = self.current()
        for _ in range(max_steps):
            if seen.screen == until or seen.screen in ("done", "error", "ended"):
                return seen
            seen = self.act()
        raise AssertionError(f"the session did not reach {until!r} in {max_steps} screens")
