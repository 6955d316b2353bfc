"""A headless browser for the studio's tests: Playwright driving Debian's chromium (``make chromium``).

Playwright's own browser download is not used; ``CHROMIUM`` is the system's build. ``PageChecks`` runs
axe-core (bundled in axe-playwright-python) on each page the test visits and keeps its serious and
critical violations; with ``EMBEDFORGE_STUDIO_SCREENSHOTS=DIR`` set it also saves each page as
DIR/NAME.png (the README's pictures), else nothing, so an ordinary test run leaves the repo as it was.
"""

from __future__ import annotations

import os
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS_ENV = "EMBEDFORGE_STUDIO_SCREENSHOTS"


SERIOUS = ("serious", "critical")


class PageChecks:
    def __init__(self, save: bool = True):
        """``save=False``: check the pages but leave the pictures to another run."""
        from axe_playwright_python.sync_playwright import Axe

        folder = os.environ.get(SCREENSHOTS_ENV) if save else None
        self.folder = Path(folder) if folder else None
        if self.folder:
            self.folder.mkdir(parents=True, exist_ok=True)
        self.axe = Axe()
        self.violations: dict[str, list[str]] = {}  # page name -> "rule: help (n nodes)"

    def take(self, page, name: str) -> None:
        """Check the page as it is now for accessibility, and save its picture when asked to."""
        found = self.axe.run(page).response["violations"]
        serious = [v for v in found if v.get("impact") in SERIOUS]
        if serious:
            self.violations[name] = [f"{v['id']}: {v['help']} ({len(v['nodes'])} nodes)" for v in serious]
        if self.folder:
            page.screenshot(path=str(self.folder / f"{name}.png"), full_page=True)


def log_in(page, url: str, key: str) -> None:
    page.goto(url + "/studio/login")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Log in").click()
