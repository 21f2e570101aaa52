"""Headless Chromium for the dashboard's browser tests: Debian's `chromium` driven by Playwright's Python API.

Playwright's own browser download needs the internet, so the tests point it at the system's
Chromium. Without either one the tests skip with a message saying what to install. Screenshots
go to $TUNEFORGE_SCREENSHOTS when it is set (docs/images is refreshed that way, see
docs/dashboard.md), else into the test's temporary folder.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("TUNEFORGE_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
VIEWPORT = {"width": 1360, "height": 860}  # a laptop screen
SCREENSHOTS_ENV = "TUNEFORGE_SCREENSHOTS"


def launch(playwright):
    if not Path(CHROMIUM).is_file() and not shutil.which(CHROMIUM):
        pytest.skip(f"no browser at {CHROMIUM}: `apt-get install -y chromium` to run the dashboard's browser tests")
    return playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed: `pip install playwright` (the dev extra) to run the browser tests")
    with sync_playwright() as playwright:
        chromium = launch(playwright)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport=VIEWPORT, device_scale_factor=1)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    yield tab
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


@pytest.fixture
def shots(tmp_path):
    """shots(page, name): a PNG of what the page shows now, in $TUNEFORGE_SCREENSHOTS or a temporary folder."""
    folder = Path(os.environ.get(SCREENSHOTS_ENV) or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)

    def take(tab, name: str) -> Path:
        path = folder / f"dashboard-{name}.png"
        tab.evaluate("window.scrollTo(0, 0)")
        tab.wait_for_timeout(400)  # let a smooth scroll settle
        tab.screenshot(path=str(path), full_page=False)
        if os.environ.get(SCREENSHOTS_ENV):  # committed images: a 128-colour palette keeps them small
            from PIL import Image

            with Image.open(path) as image:
                image.convert("RGB").quantize(colors=128, dither=Image.Dither.NONE).save(path, optimize=True)
        return path

    return take
