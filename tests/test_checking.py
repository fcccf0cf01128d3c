"""The check framework: discovery, timeouts, concurrency, settings, reports."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from checks import BUILTIN_CHECKS
from pilot.api import CheckContext, CheckOutcome, CheckResult, Status
from pilot.errors import UsageError
from pilot.node import checking
from pilot.node.batch import BatchInfo
from pilot.node.checking import CheckReport, CheckSettings
from pilot.node.entrypoints import EntryPoint

DATA = Path(__file__).parent / "data" / "checks.d"
REPO = Path(__file__).resolve().parent.parent
BATCH = BatchInfo("local", None, 2, None, None)
ONLY_GIVEN = CheckSettings(entry_points=False)


@pytest.fixture
def ctx(tmp_path: Path) -> CheckContext:
    return CheckContext(tmp_path, BATCH)


class Fixed:
    """A check returning a fixed outcome."""

    def __init__(
        self,
        name: str,
        status: Status = Status.PASSED,
        *,
        tags: tuple[str, ...] = (),
        facts: dict[str, Any] | None = None,
        required: bool = False,
        timeout: float | None = None,
    ) -> None:
        self.name, self.required, self.timeout = name, required, timeout
        self.outcome = CheckOutcome(status, f"{name} says {status.value}", facts or {}, tags)
        self.calls: list[CheckContext] = []

    def run(self, ctx: CheckContext) -> CheckOutcome:
        self.calls.append(ctx)
        return self.outcome


class Hangs:
    required = False

    def __init__(self, name: str = "hangs", timeout: float | None = 0.5) -> None:
        self.name, self.timeout = name, timeout

    def run(self, ctx: CheckContext) -> CheckOutcome:
        threading.Event().wait()  # forever; the thread is a daemon
        raise AssertionError("unreachable")


class Raises:
    name, required, timeout = "raises", False, None

    def run(self, ctx: CheckContext) -> CheckOutcome:
        raise RuntimeError("disk on fire")


class Returns:
    """A check whose run() returns whatever it was given (to test validation)."""

    required, timeout = False, None

    def __init__(self, name: str, value: object) -> None:
        self.name, self.value = name, value

    def run(self, ctx: CheckContext) -> Any:
        return self.value


# --- running -------------------------------------------------------------------


def test_results_keep_order_and_carry_outcome(ctx: CheckContext) -> None:
    checks = [
        Fixed("a", facts={"n": 1}, tags=("t1",)),
        Fixed("b", Status.WARNING, required=True),
        Fixed("c", Status.FAILED),
    ]
    report = checking.run(ctx, ONLY_GIVEN, checks)
    assert [r.name for r in report.results] == ["a", "b", "c"]
    assert [r.status for r in report.results] == [Status.PASSED, Status.WARNING, Status.FAILED]
    assert report.results[0].facts == {"n": 1}
    assert report.results[0].message == "a says PASSED"
    assert report.results[1].required and not report.results[2].required
    assert report.ok  # the failed check is not required
    assert {r.source for r in report.results} == {"python:tests.test_checking"}


def test_exception_becomes_failed_with_its_message(
    ctx: CheckContext, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="pilot.node.checking"):
        report = checking.run(ctx, ONLY_GIVEN, [Raises(), Fixed("after")])
    result = report.result("raises")
    assert result is not None and result.status is Status.FAILED
    assert result.message == "RuntimeError: disk on fire"
    assert report.result("after") is not None
    assert any(rec.exc_info and "raises" in rec.getMessage() for rec in caplog.records)


def test_hung_check_times_out_and_the_run_goes_on(ctx: CheckContext) -> None:
    start = time.monotonic()
    report = checking.run(ctx, ONLY_GIVEN, [Hangs(timeout=0.5), Fixed("fine")])
    elapsed = time.monotonic() - start
    assert elapsed < 0.5 + 1.0
    hung = report.result("hangs")
    assert hung is not None and hung.status is Status.FAILED
    assert hung.message == "timed out after 0.5 s"
    assert report.facts("fine") == {} and report.result("fine").status is Status.PASSED  # type: ignore[union-attr]


def test_timeout_from_settings_overrides_the_check_attribute(ctx: CheckContext) -> None:
    settings = CheckSettings(entry_points=False, timeouts={"hangs": 0.3})
    report = checking.run(ctx, settings, [Hangs(timeout=60.0)])
    assert report.results[0].message == "timed out after 0.3 s"


def test_default_timeout_applies_when_the_check_has_none(ctx: CheckContext) -> None:
    settings = CheckSettings(entry_points=False, default_timeout=0.3)
    report = checking.run(ctx, settings, [Hangs(timeout=None)])
    assert report.results[0].message == "timed out after 0.3 s"


def test_hung_check_does_not_block_interpreter_exit(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from pilot.node import checking
        from pilot.api import CheckContext
        from pilot.node.batch import BatchInfo

        class Hang:
            name, required, timeout = "hang", True, 0.3
            def run(self, ctx):
                time.sleep(3600)

        ctx = CheckContext(Path({str(tmp_path)!r}), BatchInfo("local", None, 1, None, None))
        report = checking.run(ctx, checking.CheckSettings(entry_points=False), [Hang()])
        print(report.results[0].status.value, report.results[0].message, report.ok)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "FAILED timed out after 0.3 s False"


def test_independent_checks_run_concurrently(ctx: CheckContext) -> None:
    barrier = threading.Barrier(3, timeout=10)

    class Meets:
        required, timeout = False, 15.0

        def __init__(self, name: str) -> None:
            self.name = name

        def run(self, ctx: CheckContext) -> CheckOutcome:
            barrier.wait()  # only returns when all three run at the same time
            return CheckOutcome(Status.PASSED)

    report = checking.run(ctx, ONLY_GIVEN, [Meets("x"), Meets("y"), Meets("z")])
    assert [r.status for r in report.results] == [Status.PASSED] * 3


def test_disabled_check_is_skipped_and_never_run(ctx: CheckContext) -> None:
    off = Fixed("off", Status.FAILED, required=True)
    settings = CheckSettings(entry_points=False, disabled=frozenset({"off"}))
    report = checking.run(ctx, settings, [off, Fixed("on")])
    assert off.calls == []
    assert report.result("off").status is Status.SKIPPED  # type: ignore[union-attr]
    assert report.result("off").message == "disabled by configuration"  # type: ignore[union-attr]
    assert report.ok


def test_required_setting_makes_a_failure_fatal(ctx: CheckContext) -> None:
    checks = [Fixed("optional", Status.FAILED), Fixed("other")]
    assert checking.run(ctx, ONLY_GIVEN, checks).ok
    settings = CheckSettings(entry_points=False, required=frozenset({"optional"}))
    report = checking.run(ctx, settings, checks)
    assert not report.ok
    assert [r.name for r in report.failed_required] == ["optional"]


def test_required_check_that_does_not_exist_fails(ctx: CheckContext) -> None:
    settings = CheckSettings(entry_points=False, required=frozenset({"myvo-software"}))
    report = checking.run(ctx, settings, [Fixed("a")])
    missing = report.result("myvo-software")
    assert missing is not None and missing.required and missing.failed
    assert missing.message == "required check not found" and not report.ok


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "returned NoneType, not a CheckOutcome"),
        (CheckOutcome(Status.PASSED, facts={"when": object()}), "not JSON-serialisable"),
        (CheckOutcome(Status.PASSED, tags=("ok", 3)), "tags must be non-empty strings"),  # type: ignore[arg-type]
        (CheckOutcome(Status.PASSED, facts={"free_mb": float("nan")}), "not JSON-serialisable"),
        (CheckOutcome(Status.PASSED, facts={"x": [float("inf")]}), "not JSON-serialisable"),
    ],
)
def test_invalid_outcome_is_failed(ctx: CheckContext, value: object, expected: str) -> None:
    result = checking.run(ctx, ONLY_GIVEN, [Returns("odd", value)]).results[0]
    assert result.status is Status.FAILED and expected in result.message


def test_invalid_check_object_is_reported(ctx: CheckContext) -> None:
    broken = Fixed("broken")
    broken.timeout = -1  # type: ignore[assignment]
    result = checking.run(ctx, ONLY_GIVEN, [broken]).results[0]
    assert result.status is Status.FAILED and "timeout must be" in result.message


def test_check_whose_attribute_raises_is_reported(ctx: CheckContext) -> None:
    class Moody:
        required, timeout = False, None

        @property
        def name(self) -> str:
            raise RuntimeError("no name today")

        def run(self, ctx: CheckContext) -> CheckOutcome:
            return CheckOutcome(Status.PASSED)

    result = checking.run(ctx, ONLY_GIVEN, [Moody()]).results[0]
    assert (result.name, result.status) == (Moody.__qualname__, Status.FAILED)
    assert (
        result.message == "invalid check: reading its attributes raised RuntimeError: no name today"
    )


def test_context_carries_options_and_the_check_timeout(ctx: CheckContext) -> None:
    seen = Fixed("seen", timeout=7.0)
    settings = CheckSettings(entry_points=False, options={"seen": {"level": 3}})
    checking.run(ctx, settings, [seen])
    (given,) = seen.calls
    assert given.option("seen", "level") == 3 and given.timeout == 7.0
    assert given.work_dir == ctx.work_dir and given.batch == BATCH


# --- report --------------------------------------------------------------------


def _report() -> CheckReport:
    return CheckReport(
        (
            CheckResult(
                "cpu", False, Status.PASSED, "ok", 0.25, {"cores": 2}, ("x86-64-v2", "avx2")
            ),
            CheckResult("disk", True, Status.WARNING, "slow", 0.1, {"free_mb": 5}, ("scratch",)),
            CheckResult("vo", True, Status.FAILED, "broken", 1.5, {}, ("vo:ok",), "entry-point:x"),
            CheckResult("gpu", False, Status.SKIPPED, "disabled by configuration", 0.0),
        )
    )


def test_report_views() -> None:
    report = _report()
    assert not report.ok
    assert [r.name for r in report.failed_required] == ["vo"]
    assert report.facts("cpu") == {"cores": 2} and report.facts("nothing") == {}
    assert report.tags == ("avx2", "scratch", "x86-64-v2")  # failed check's tag left out


def test_report_json_round_trip() -> None:
    report = _report()
    data = json.loads(json.dumps(report.to_json()))
    assert data["ok"] is False and data["tags"] == ["avx2", "scratch", "x86-64-v2"]
    assert CheckReport.from_json(data) == report


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"results": [{"name": "x"}]},
        {"results": [{"name": "x", "required": True, "status": "MEH"}]},
    ],
)
def test_report_from_malformed_json_raises(data: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="malformed check report"):
        CheckReport.from_json(data)


def test_format_table_lists_every_check() -> None:
    table = checking.format_table(_report())
    lines = table.splitlines()
    assert lines[0].split() == ["CHECK", "STATUS", "REQUIRED", "TIME", "MESSAGE"]
    assert lines[1].split() == ["cpu", "PASSED", "no", "0.25s", "ok"]
    assert lines[3].split() == ["vo", "FAILED", "yes", "1.50s", "broken"]
    assert lines[-1] == "node NOT OK: required check(s) failed: vo"


# --- executable checks -----------------------------------------------------------


def _wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def test_executable_checks(ctx: CheckContext, caplog: pytest.LogCaptureFixture) -> None:
    settings = CheckSettings(
        entry_points=False, timeouts={"hang.sh": 1.0}, options={"options.py": {"level": 3}}
    )
    checks = checking.exec_checks(DATA)
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="pilot.node.checking"):
        report = checking.run(ctx, settings, checks)
    assert time.monotonic() - start < 1.0 + 1.0
    got = {r.name: r for r in report.results}
    assert list(got) == sorted(p.name for p in DATA.iterdir() if p.suffix in (".sh", ".py"))
    assert got["pass-json.sh"].status is Status.PASSED
    assert got["pass-json.sh"].message == "all good"
    assert got["pass-json.sh"].facts == {"scratch": str(ctx.work_dir), "cores": 2}
    assert got["pass-json.sh"].source == f"exec:{DATA / 'pass-json.sh'}"
    assert got["fail-stderr.sh"].status is Status.FAILED
    assert got["fail-stderr.sh"].message == "checking the frobnicator | frobnicator missing"
    assert (got["warn.sh"].status, got["warn.sh"].message) == (Status.WARNING, "scratch is slow")
    assert (got["hang.sh"].status, got["hang.sh"].message) == (Status.FAILED, "timed out after 1 s")
    assert got["odd-exit.sh"].status is Status.FAILED
    assert got["odd-exit.sh"].message == "exit code 3: something odd"
    assert got["not-json.sh"].status is Status.PASSED and got["not-json.sh"].facts == {}
    assert "not-json.sh: stdout is not a JSON object" in caplog.text
    assert got["options.py"].facts == {"options": {"level": 3}, "batch": "local"}
    assert report.tags == ("sample-exec", "site:test")
    pid = int((ctx.work_dir / "hang.pid").read_text())
    assert _wait_gone(pid, 5.0), "the hung executable check was not killed"


def test_exec_discovery_takes_only_executable_regular_files(tmp_path: Path) -> None:
    (tmp_path / "b-check").write_text("#!/bin/sh\nexit 0\n")
    (tmp_path / "a-check").write_text("#!/bin/sh\nexit 0\n")
    (tmp_path / "notes.txt").write_text("not executable")
    (tmp_path / ".hidden").write_text("#!/bin/sh\nexit 1\n")
    (tmp_path / "subdir").mkdir()
    for name in ("a-check", "b-check", ".hidden", "subdir"):
        (tmp_path / name).chmod(0o755)
    settings = CheckSettings(entry_points=False, checks_dir=tmp_path, builtins=BUILTIN_CHECKS)
    names = [c.name for c in checking.discover(settings)]
    assert names[-2:] == ["a-check", "b-check"]
    assert names[:-2] == [c.name for c in BUILTIN_CHECKS]  # the registered built-ins first
    assert checking.discover(ONLY_GIVEN) == []  # none unless registered


def test_missing_checks_dir_is_a_failed_result(ctx: CheckContext, tmp_path: Path) -> None:
    settings = CheckSettings(entry_points=False, checks_dir=tmp_path / "nope")
    failures = [c for c in checking.discover(settings) if c.name == "checks-dir"]
    report = checking.run(ctx, settings, failures)
    assert report.results[0].status is Status.FAILED
    assert "cannot list" in report.results[0].message


def test_exec_check_with_bad_interpreter_fails(ctx: CheckContext, tmp_path: Path) -> None:
    script = tmp_path / "bad-interp"
    script.write_text("#!/nonexistent/interpreter\n")
    script.chmod(0o755)
    result = checking.run(ctx, ONLY_GIVEN, checking.exec_checks(tmp_path)).results[0]
    assert result.status is Status.FAILED and "No such file" in result.message


def test_exec_check_silent_failure_and_signal(ctx: CheckContext, tmp_path: Path) -> None:
    checks_dir = tmp_path / "checks"
    checks_dir.mkdir()
    for name, body in (("silent", "exit 1"), ("signalled", "kill -9 $$")):
        (checks_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (checks_dir / name).chmod(0o755)
    report = checking.run(ctx, ONLY_GIVEN, checking.exec_checks(checks_dir))
    assert [(r.status, r.message) for r in report.results] == [
        (Status.FAILED, "killed by signal 9"),
        (Status.FAILED, "exit code 1"),
    ]


@pytest.mark.parametrize("bad", [0, -1.0, True, "30"])
def test_settings_reject_bad_timeouts(bad: Any) -> None:
    with pytest.raises(UsageError, match="must be positive"):
        CheckSettings(timeouts={"cpu": bad})
    with pytest.raises(UsageError, match="'default'"):
        CheckSettings(default_timeout=bad)


# --- entry-point plugins -----------------------------------------------------------

PLUGINS = """
import time
from pilot.api import CheckOutcome, Status

class Good:
    name, required, timeout = "fake-good", False, 5.0
    def run(self, ctx):
        return CheckOutcome(Status.PASSED, "fine", {"answer": 42}, ("fake:good",))

class Named:
    required, timeout = False, None
    def __init__(self, name):
        self.name = name
    def run(self, ctx):
        return CheckOutcome(Status.PASSED, "instance")

INSTANCE = Named("fake-instance")
CPU_AGAIN = Named("cpu")

class Sleeper:
    name, required, timeout = "fake-sleeper", False, 0.5
    def run(self, ctx):
        time.sleep(3600)

class Raiser:
    name, required, timeout = "fake-raiser", False, None
    def run(self, ctx):
        raise ValueError("plugin exploded")

class BadTimeout:
    name, required, timeout = "fake-bad-timeout", False, -1
    def run(self, ctx):
        return CheckOutcome(Status.PASSED)

class NoRun:
    name, required, timeout = "fake-no-run", False, None

class InitFails:
    def __init__(self):
        raise RuntimeError("cannot initialise")

NOT_A_CHECK = 42
"""


def _fake_distribution(site: Path, module: str, entry_points: dict[str, str]) -> None:
    """A distribution on ``site`` (a sys.path entry) with ``pilot.checks`` entry points."""
    (site / f"{module}.py").write_text(PLUGINS)
    (site / f"{module}_exit.py").write_text("raise SystemExit(3)\n")
    info = site / "fake_vo_checks-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-vo-checks\nVersion: 0.1\n")
    lines = "".join(f"{name} = {value}\n" for name, value in entry_points.items())
    (info / "entry_points.txt").write_text(f"[pilot.checks]\n{lines}")


@pytest.fixture
def fake_plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    module = f"fake_vo_checks_{uuid.uuid4().hex}"
    site = tmp_path / "site"
    site.mkdir()
    _fake_distribution(
        site,
        module,
        {
            "good": f"{module}:Good",
            "instance": f"{module}:INSTANCE",
            "sleeper": f"{module}:Sleeper",
            "raiser": f"{module}:Raiser",
            "bad-timeout": f"{module}:BadTimeout",
            "no-run": f"{module}:NoRun",
            "init-fails": f"{module}:InitFails",
            "not-a-check": f"{module}:NOT_A_CHECK",
            "missing-attr": f"{module}:Nope",
            "missing-module": "no_such_module_for_pilot_tests:Check",
            "exits-on-import": f"{module}_exit:Check",
            "cpu-again": f"{module}:CPU_AGAIN",
        },
    )
    monkeypatch.syspath_prepend(str(site))
    yield [
        c
        for c in checking.discover(CheckSettings(builtins=BUILTIN_CHECKS))
        if checking.source_of(c) != "builtin"
    ]
    for name in (module, f"{module}_exit"):
        sys.modules.pop(name, None)


def test_entry_point_plugins_loaded_validated_and_run(
    ctx: CheckContext, fake_plugins: list[Any]
) -> None:
    start = time.monotonic()
    report = checking.run(ctx, CheckSettings(), fake_plugins)
    assert time.monotonic() - start < 0.5 + 1.0  # the sleeper's timeout, plus slack
    got = {r.name: r for r in report.results if r.source == "entry-point:fake-vo-checks"}
    assert (got["fake-good"].status, got["fake-good"].facts) == (Status.PASSED, {"answer": 42})
    assert got["fake-instance"].message == "instance"
    assert got["fake-sleeper"].message == "timed out after 0.5 s"
    assert got["fake-raiser"].message == "ValueError: plugin exploded"
    expected_failures = {
        "bad-timeout": "timeout must be None or a positive number",
        "no-run": "missing run",
        "init-fails": "RuntimeError: cannot initialise",
        "not-a-check": "missing name, required, timeout, run",
        "missing-attr": "cannot load",
        "missing-module": "ModuleNotFoundError",
        "exits-on-import": "SystemExit: 3",
        "cpu@entry-point:fake-vo-checks": "check name 'cpu' already used by builtin",
    }
    for name, text in expected_failures.items():
        assert got[name].status is Status.FAILED, name
        assert text in got[name].message, (name, got[name].message)
    assert "fake:good" in report.tags


def test_load_failure_can_be_made_required(ctx: CheckContext, fake_plugins: list[Any]) -> None:
    broken = [c for c in fake_plugins if c.name == "missing-module"]
    settings = CheckSettings(required=frozenset({"missing-module"}))
    report = checking.run(ctx, settings, broken)
    assert not report.ok and report.failed_required[0].name == "missing-module"


def test_entry_point_without_distribution(
    ctx: CheckContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = EntryPoint(name="orphan", value="no_such_module_either:Thing", group="pilot.checks")
    monkeypatch.setattr(checking, "_entry_points", lambda: (bad,))
    checks = [c for c in checking.discover(CheckSettings()) if c.name == "orphan"]
    result = checking.run(ctx, ONLY_GIVEN, checks).results[0]
    assert (
        result.status is Status.FAILED
        and result.source == "entry-point:no_such_module_either:Thing"
    )


def test_entry_point_listing_failure_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> tuple[()]:
        raise OSError("corrupt metadata")

    monkeypatch.setattr(checking, "_entry_points", broken)
    failures = [c for c in checking.discover(CheckSettings()) if c.name == "entry-points"]
    assert len(failures) == 1 and "corrupt metadata" in failures[0].reason  # type: ignore[attr-defined]


def test_sample_vo_plugin_appears_in_the_report_with_its_tag(ctx: CheckContext) -> None:
    names = [c.name for c in checking.discover(CheckSettings())]
    assert "sample-vo" in names, (
        "pilot-sample-vo-plugin is not installed: "
        ".venv/bin/pip install -e tests/plugins/sample_vo_plugin (make venv does it)"
    )
    settings = CheckSettings(options={"sample-vo": {"release": "2.5"}}, builtins=BUILTIN_CHECKS)
    report = checking.run(ctx, settings)  # the full default set: built-ins and plugins
    vo = report.result("sample-vo")
    assert vo is not None and vo.status is Status.PASSED
    assert vo.source == "entry-point:pilot-sample-vo-plugin"
    assert vo.facts["release"] == "2.5"
    assert "sample-vo:ok" in report.tags and "x86-64-v1" in report.tags


def test_sample_vo_plugin_fails_without_its_marker(ctx: CheckContext) -> None:
    checks = [c for c in checking.discover(CheckSettings()) if c.name == "sample-vo"]
    assert checks, "pilot-sample-vo-plugin is not installed"
    settings = CheckSettings(options={"sample-vo": {"marker": "vo-ready"}})
    assert checking.run(ctx, settings, checks).results[0].status is Status.FAILED
    (ctx.work_dir / "vo-ready").touch()
    assert checking.run(ctx, settings, checks).results[0].status is Status.PASSED


def test_per_check_timeouts_come_from_the_checks_tables(tmp_path: Path) -> None:
    from pilot import agent
    from pilot.config import PilotConfig

    config = PilotConfig(checks={"hang.sh": {"timeout": 0.5}, "disk": {"min_free_mb": 1}})
    assert agent.check_settings(config).timeouts == {"hang.sh": 0.5}
    with pytest.raises(UsageError, match=r"hang\.sh"):
        agent.check_settings(PilotConfig(checks={"hang.sh": {"timeout": "soon"}}))


def test_node_facts_are_read_from_the_declared_checks_and_keys() -> None:
    from pilot.api import NodeFacts

    def result(name: str, **facts: object) -> CheckResult:
        return CheckResult(name, False, Status.PASSED, "", 0.0, facts)

    results = [
        result("cpu", benchmark=12.5),
        result("software", platform="Linux_x86_64_glibc-2.36"),
        result("disk", free_mb=2048),
        result("gpu", count=2),
        result("myvo", benchmark=99.0),  # not a declared source: ignored
    ]
    assert NodeFacts.from_results(results) == NodeFacts(12.5, "Linux_x86_64_glibc-2.36", 2048, 2)
    assert NodeFacts.from_results([]) == NodeFacts()
    odd = [result("cpu", benchmark="fast"), result("gpu", count=True), result("disk", free_mb=None)]
    assert NodeFacts.from_results(odd) == NodeFacts()  # malformed facts fall back to defaults
    assert set(NodeFacts.SOURCES) == {"cpu_power", "platform", "free_disk_mb", "gpus"}


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), -4])
def test_node_facts_out_of_range_fall_back_to_defaults(value: float) -> None:
    """A NaN, infinite or negative figure is malformed too (int() of NaN would raise)."""
    from pilot.api import NodeFacts

    results = [
        CheckResult("cpu", False, Status.PASSED, "", 0.0, {"benchmark": value}),
        CheckResult("disk", False, Status.PASSED, "", 0.0, {"free_mb": value}),
        CheckResult("gpu", False, Status.PASSED, "", 0.0, {"count": value}),
    ]
    assert NodeFacts.from_results(results) == NodeFacts()


def test_exec_check_printing_nan_facts_fails(ctx: CheckContext, tmp_path: Path) -> None:
    """Python's json reads NaN; the check's facts would then go to the matcher as non-JSON."""
    script = tmp_path / "nan-facts"
    script.write_text('#!/bin/sh\necho \'{"facts": {"free_mb": NaN}}\'\n')
    script.chmod(0o755)
    result = checking.run(ctx, ONLY_GIVEN, checking.exec_checks(tmp_path)).results[0]
    assert result.status is Status.FAILED and "not JSON-serialisable" in result.message
