"""A headless browser for the studio's tests: Playwright driving Debian's chromium (``make chromium``).

Playwright's own browser download is not used; ``CHROMIUM`` is the system's build. With
``EMBEDFORGE_STUDIO_SCREENSHOTS=DIR`` set, ``Screenshots`` saves each named page to DIR/NAME.png (the
README's pictures); otherwise it saves nothing, so an ordinary test run leaves the repo as it was.
"""

from __future__ import annotations

import os
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS_ENV = "EMBEDFORGE_STUDIO_SCREENSHOTS"


class Screenshots:
    def __init__(self):
        folder = os.environ.get(SCREENSHOTS_ENV)
        self.folder = Path(folder) if folder else None
        if self.folder:
            self.folder.mkdir(parents=True, exist_ok=True)

    def take(self, page, name: str) -> None:
        if self.folder:
            page.screenshot(path=str(self.folder / f"{name}.png"), full_page=True)


def log_in(page, url: str, key: str) -> None:
    page.goto(url + "/studio/login")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Log in").click()
