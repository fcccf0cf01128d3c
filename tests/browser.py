"""Headless Chromium from Debian (``chromium``, ``chromium-driver``) driven by Selenium.

Selenium is pointed at /usr/bin/chromedriver and /usr/bin/chromium, so it never looks
for or downloads a browser of its own. Without them the tests skip saying which Debian
package to install (``scripts/system-deps.sh`` does, as root); with ``CI=true`` they
fail instead. Screenshots go to ``$PILOT_TEST_ARTIFACTS`` (default
``<repo>/test-artifacts``).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tests.conftest import REPO, unavailable

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
logging.getLogger("selenium").setLevel(logging.INFO)  # not every WebDriver call
logging.getLogger("urllib3").setLevel(logging.INFO)
ARTIFACTS = Path(os.environ.get("PILOT_TEST_ARTIFACTS") or REPO / "test-artifacts")


def chromium_driver() -> Iterator[Any]:
    """A fresh headless Chromium (own profile directory), quit and removed afterwards."""
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not path.exists():
            unavailable(
                f"needs {path}: install the Debian package {package} (scripts/system-deps.sh)"
            )
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        unavailable("needs the Python package selenium (pip install -e '.[dev]')")
    profile = tempfile.mkdtemp(prefix="pilot-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless",
        "--no-sandbox",  # as root Chromium refuses to start with its sandbox
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--window-size=1400,1000",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        service = Service(executable_path=str(CHROMEDRIVER))
        driver = webdriver.Chrome(options=options, service=service)
    except BaseException:  # chromedriver and chromium of other versions, or no display
        shutil.rmtree(profile, ignore_errors=True)
        raise
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def screenshot(driver: Any, name: str) -> Path:
    """Save the whole page as ARTIFACTS/monitor/NAME.png (a test artifact)."""
    folder = ARTIFACTS / "monitor"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1400, min(max(int(height) + 40, 600), 4000))
    driver.save_screenshot(str(path))
    driver.set_window_size(1400, 1000)
    return path


def eventually(what: Callable[[], Any], timeout: float, message: str) -> Any:
    """Poll ``what`` (retrying while the page reloads under it) until it is true. Any
    WebDriver error is retried until the deadline: in the middle of a navigation (a form
    posted, a redirect) Chromium may also answer "target frame detached" or "cannot
    determine loading status", more often on a loaded host; the last one is reported."""
    from selenium.common.exceptions import WebDriverException

    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = what()
            if last:
                return last
        except WebDriverException as exc:  # stale or missing element, navigation
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} (last seen: {last!r})")
        time.sleep(0.2)
