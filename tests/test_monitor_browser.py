"""The Job and Pilot Monitor in a real browser: Debian's headless Chromium, driven by
Selenium, against a stub on loopback with a real pilot process running the jobs.

Jobs are submitted with the ``pilot-stub`` command; the browser filters, sorts and pages
the jobs table, watches a job go Waiting -> Running -> Done through the page's own live
updates (the test never reloads), kills a running job from its page and sees the pilot
report it Killed, reads the pilot's check report and why its last match found nothing,
and shows a hostile job name and check message as plain text. Screenshots of the pages
are saved as test artifacts (see tests/browser.py).
"""

from __future__ import annotations

import http.server
import json
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser import chromium_driver, eventually, screenshot
from tests.conftest import BIN, FAST, Stub, pilot_env, start_stub
from tests.payloads.support import start_pilot

pytestmark = [pytest.mark.slow, pytest.mark.system, pytest.mark.timeout(300)]

HOSTILE_NAME = "<img src=x onerror=alert(1)>"
HOSTILE_MESSAGE = "<b>bold</b> <script>alert(2)</script> & <i>more</i>"
HOSTILE_REPORT = json.dumps(
    {"message": HOSTILE_MESSAGE, "tags": ["vo:<i>x</i>"], "facts": {"html": "<u>u</u>"}}
)
HOSTILE_CHECK = f"#!/bin/sh\nprintf '%s\\n' '{HOSTILE_REPORT}'\nexit 0\n"
HOSTILE_RELEASE = "<b>2</b><script>alert(4)</script>"  # the Python plugin's message
FAR_AWAY = "LCG.Elsewhere.org"


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    yield from chromium_driver()


def by(css: str) -> tuple[str, str]:
    return ("css selector", css)


def text(driver: Any, css: str) -> str:
    return str(driver.find_element(*by(css)).text)


def cli_submit(stub: Stub, folder: Path, name: str, jdl: str) -> list[int]:
    path = folder / f"{name}.jdl"
    path.write_text(jdl)
    done = subprocess.run(
        [str(BIN / "pilot-stub"), "--server", stub.url, "submit", "--json", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=pilot_env(),
    )
    assert done.returncode == 0, done.stderr
    return [int(i) for row in json.loads(done.stdout) for i in row["JobID"]]


def no_alert(driver: Any) -> bool:
    from selenium.common.exceptions import NoAlertPresentException

    try:
        driver.switch_to.alert  # noqa: B018 (raises when there is none)
    except NoAlertPresentException:
        return True
    return False


def test_monitor_follows_jobs_and_pilot(driver: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    stub = start_stub(tmp_path / "stub")
    pilot = None
    try:
        (short_job,) = cli_submit(
            stub,
            tmp_path,
            "hostile",
            f'JobName = "{HOSTILE_NAME}"; Executable = "/bin/sleep"; Arguments = "6";'
            ' StdOutput = "std.out"; OutputSandbox = {"std.out"};',
        )
        (long_job,) = cli_submit(
            stub,
            tmp_path,
            "long",
            'JobName = "long-sleeper"; Executable = "/bin/sleep"; Arguments = "300";',
        )
        far = cli_submit(
            stub,
            tmp_path,
            "far",
            f'JobName = "far-%n"; Executable = "/bin/true"; Site = "{FAR_AWAY}"; Parameters = 60;',
        )
        assert len(far) == 60

        # The jobs table: everything shows, the hostile name as text.
        driver.get(stub.url + "/?size=100")
        assert driver.title.startswith("Jobs")
        assert "62 job(s) match" in text(driver, "#summary")
        assert text(driver, f"#job-{short_job}") == str(short_job)
        names = [e.text for e in driver.find_elements(*by("#jobs td.name"))]
        assert HOSTILE_NAME in names
        assert driver.find_elements(*by("#jobs img")) == []

        # Filter by name (typed, Enter submits), then by status from the list.
        box = driver.find_element(*by("#f-name"))
        box.send_keys("sleeper", Keys.ENTER)
        eventually(lambda: "1 job(s) match" in text(driver, "#summary"), 10, "name filter")
        assert [e.text for e in driver.find_elements(*by("#jobs td.name"))] == ["long-sleeper"]
        driver.get(stub.url + "/")
        Select(driver.find_element(*by("#f-status"))).select_by_value("Waiting")
        driver.find_element(*by("#filter")).click()
        eventually(lambda: "status=Waiting" in driver.current_url, 10, "status filter")
        statuses = {e.text for e in driver.find_elements(*by("#jobs td.status"))}
        assert statuses == {"Waiting"}

        # Paging (50 a page) and sorting by a column heading.
        assert "Page 1 of 2" in text(driver, ".pager")
        driver.find_element(*by(".pager a[rel=next]")).click()
        eventually(lambda: "Page 2 of 2" in text(driver, ".pager"), 10, "second page")
        assert len(driver.find_elements(*by("#jobs tbody tr"))) == 12
        driver.get(stub.url + "/?size=100")
        driver.find_element(*by("#jobs th:nth-child(2) a")).click()  # Name
        eventually(
            lambda: (
                driver.find_element(*by("#jobs th:nth-child(2)")).get_attribute("aria-sort")
                == "ascending"
            ),
            10,
            "sorted by name",
        )
        shown = [e.text for e in driver.find_elements(*by("#jobs td.name"))]
        assert shown == sorted(shown) and shown[0] == HOSTILE_NAME  # '<' sorts first
        driver.get(stub.url + "/?size=25")
        screenshot(driver, "jobs")

        # Keyboard only: the skip link comes first, and Tab reaches a job's link.
        driver.get(stub.url + "/?name=%3Cimg")
        body = driver.find_element(*by("body"))
        body.send_keys(Keys.TAB)
        assert driver.switch_to.active_element.text == "Skip to content"
        for _ in range(60):
            active = driver.switch_to.active_element
            if active.get_attribute("id") == f"job-{short_job}":
                break
            active.send_keys(Keys.TAB)
        else:
            pytest.fail("Tab never reached the job's link")
        driver.switch_to.active_element.send_keys(Keys.ENTER)
        eventually(lambda: driver.current_url.endswith(f"/jobs/{short_job}"), 10, "job page")

        # The job page follows the job live while a pilot runs it.
        assert text(driver, "#job-name") == HOSTILE_NAME
        assert text(driver, "#job-status") == "Waiting"
        checks = tmp_path / "checks.d"
        checks.mkdir()
        (checks / "html-message.sh").write_text(HOSTILE_CHECK)
        (checks / "html-message.sh").chmod(0o755)
        config = tmp_path / "pilot.toml"
        config.write_text(f"[checks.sample-vo]\nrelease = {json.dumps(HOSTILE_RELEASE)}\n")
        pilot = start_pilot(
            stub,
            tmp_path / "pilot",
            *FAST,
            "--checks-dir",
            str(checks),
            "--config",
            str(config),
            "--heartbeat-interval",
            "1",
            "--sample-interval",
            "0.3",
            "--idle-timeout",
            "4",
        )
        eventually(lambda: text(driver, "#job-status") == "Running", 60, "job shown Running")
        eventually(lambda: text(driver, "#job-status") == "Done", 60, "job shown Done")
        history = [e.text for e in driver.find_elements(*by("#history td:nth-child(2)"))]
        assert history[:2] == ["Received", "Waiting"] and "Running" in history
        assert history[-1] == "Done"
        assert driver.find_elements(*by("a[href$='/output']")), "no output download link"
        screenshot(driver, "job")

        # Kill the long job from its page: the pilot stops it and reports it Killed.
        driver.get(f"{stub.url}/jobs/{long_job}")
        eventually(lambda: text(driver, "#job-status") == "Running", 30, "long job Running")
        driver.find_element(*by("#kill")).click()
        eventually(lambda: "Kill requested" in text(driver, "#result"), 10, "kill sent")
        eventually(lambda: text(driver, "#job-status") == "Killed", 60, "job shown Killed")
        sources = [e.text for e in driver.find_elements(*by("#history td:nth-child(5)"))]
        assert sources[-1] != "JobManager", "the pilot, not the stub, ends the job"
        assert not driver.find_elements(*by("#kill"))

        # The pilot's page: its check report (the plugin's HTML as text) and, once it
        # has gone idle, why its last match found nothing.
        assert pilot.wait(timeout=60) == 0
        driver.get(stub.url + "/pilots")
        screenshot(driver, "pilots")
        driver.find_element(*by("#pilots tbody a")).click()
        eventually(lambda: "/pilots/" in driver.current_url, 10, "pilot page")
        rows = driver.find_elements(*by("#checks tbody tr"))
        by_name = {r.find_element(*by(".check-name")).text: r for r in rows}
        assert {"html-message.sh", "sample-vo", "disk"} <= set(by_name)
        message = by_name["html-message.sh"].find_element(*by(".message")).text
        assert message == HOSTILE_MESSAGE
        plugin = by_name["sample-vo"].find_element(*by(".message")).text
        assert plugin == f"sample VO release {HOSTILE_RELEASE}"
        assert "vo:<i>x</i>" in text(driver, "#tags")
        assert driver.find_elements(*by("#checks b, #checks script, #checks i, #checks u")) == []
        assert "nothing matched" in text(driver, "#last-match")
        misses = text(driver, "#near-misses")
        assert FAR_AWAY in misses and "not in job's sites" in misses
        pilot_jobs = text(driver, "#pilot-jobs")
        assert str(long_job) in pilot_jobs and str(short_job) in pilot_jobs
        screenshot(driver, "pilot")
        assert no_alert(driver)
        severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert severe == [], severe  # no CSP violation, no failed load
    finally:
        if pilot is not None and pilot.poll() is None:
            pilot.kill()
            pilot.wait()
        stub.client.close()
        stub.server.stop()


class _Attacker(http.server.BaseHTTPRequestHandler):
    """Another origin (another port) whose page posts a kill to the monitor."""

    target = ""

    def do_GET(self) -> None:
        page = (
            f'<form id="f" method="post" action="{self.target}">'
            '<input name="csrf" value="guess"></form>'
            '<script>document.getElementById("f").submit()</script>'
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(page)))
        self.end_headers()
        self.wfile.write(page)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_cross_site_kill_is_refused(driver: Any, stub: Stub) -> None:
    (job,) = stub.submit('JobName = "victim"; Executable = "/bin/true";')
    driver.get(f"{stub.url}/jobs/{job}")  # the browser now holds a monitor session
    assert text(driver, "#job-status") == "Waiting"
    _Attacker.target = f"{stub.url}/jobs/{job}/kill"
    attacker = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Attacker)
    thread = threading.Thread(target=attacker.serve_forever, daemon=True)
    thread.start()
    try:
        driver.get(f"http://127.0.0.1:{attacker.server_address[1]}/")
        eventually(lambda: "cross-site request refused" in text(driver, "body"), 10, "refusal")
    finally:
        attacker.shutdown()
        attacker.server_close()
    assert stub.status(job) == "Waiting"
    # The same kill from the job's own page goes through.
    from selenium.webdriver.common.keys import Keys

    driver.get(f"{stub.url}/jobs/{job}")
    driver.find_element(*by("#kill")).send_keys(Keys.ENTER)  # by keyboard
    eventually(lambda: text(driver, "#job-status") == "Killed", 10, "killed from its page")
    assert stub.status(job) == "Killed"


def test_sign_in_with_a_user_token(driver: Any, tmp_path: Path) -> None:
    from server_stub.app import AuthPolicy
    from tests.conftest import secret

    user, pilot_token = secret("browser-user-token-1"), secret("browser-pilot-token-1")
    stub = start_stub(
        tmp_path / "stub", auth=AuthPolicy(frozenset({pilot_token}), frozenset({user}))
    )
    try:
        driver.delete_all_cookies()
        driver.get(stub.url + "/pilots")
        eventually(lambda: "/login" in driver.current_url, 10, "sent to sign in")
        driver.find_element(*by("#token")).send_keys(pilot_token)
        driver.find_element(*by("#sign-in")).click()
        eventually(lambda: "not accepted" in text(driver, "#error"), 10, "pilot token refused")
        driver.find_element(*by("#token")).send_keys(user)
        driver.find_element(*by("#sign-in")).click()
        eventually(lambda: driver.current_url.endswith("/pilots"), 10, "back where asked")
        assert "Signed in as user-token" in text(driver, "header")
        driver.find_element(*by("header button")).click()  # sign out
        # Wait for the sign-out's own redirect before loading anything else: a page
        # loaded while the POST is in flight cancels it (seen once in CI).
        eventually(lambda: "/login" in driver.current_url, 10, "signed out")
        driver.get(stub.url + "/pilots")
        eventually(lambda: "/login" in driver.current_url, 10, "still signed out")
    finally:
        stub.server.stop()


def test_a_browser_that_does_not_start_leaves_no_profile_behind(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """chromedriver refusing the installed chromium (versions apart) is an error, and the
    profile directory made for it is removed."""
    from selenium import webdriver
    from selenium.common.exceptions import SessionNotCreatedException

    def refuse(**kwargs: Any) -> None:
        raise SessionNotCreatedException("This version of ChromeDriver only supports ...")

    monkeypatch.setattr(webdriver, "Chrome", refuse)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    with pytest.raises(SessionNotCreatedException):
        next(chromium_driver())
    assert list(tmp_path.iterdir()) == []
