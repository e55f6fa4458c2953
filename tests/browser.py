"""Headless Chromium for the browser tests: Debian's binary, driven by playwright.

No browser is downloaded: playwright launches /usr/bin/chromium. The flags
keep it from reaching out to any network service at start.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--disable-default-apps", "--disable-extensions",
]


def chromium_path() -> str:
    """Return Debian's chromium, or skip (fail in CI) when it is missing."""
    import os

    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path:
        return path
    if os.environ.get("CI"):
        pytest.fail("chromium is not installed (scripts/dev.sh installs it as root)")
    pytest.skip("chromium is not installed")


@contextmanager
def browser_page(width: int = 1400, height: int = 1000) -> Iterator[Any]:
    """Yield a fresh page in a headless Chromium, closed afterwards."""
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=executable,
                                         args=CHROMIUM_FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            yield page
        finally:
            browser.close()
