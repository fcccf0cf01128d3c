"""The CPU benchmark neither delays the first match nor competes with the first stage-in."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from pilot import agent
from pilot.api import CheckContext, CheckOutcome, CheckResult, Status
from pilot.config import PilotConfig
from pilot.node import batch, checking
from tests.conftest import Stub, run_pilot


class FakeCpu:
    name, required, timeout = "cpu", False, None
    started: list[float] = []

    def run(self, ctx: CheckContext) -> CheckOutcome:
        FakeCpu.started.append(time.monotonic())
        return CheckOutcome(Status.PASSED, "fake", facts={"benchmark": 12.5})


def _benchmark(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[agent.Benchmark, threading.Event]:
    FakeCpu.started = []
    wake = threading.Event()
    config = PilotConfig(server="http://127.0.0.1:9", work_dir=tmp_path)
    placeholder = CheckResult("cpu", False, Status.PASSED, "benchmark deferred", 0.0)
    report = checking.CheckReport((placeholder,))
    return agent.Benchmark(config, batch.detect(), report, "stamp", wake, [FakeCpu()]), wake


def test_benchmark_waits_for_the_first_payload(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bench, wake = _benchmark(tmp_path, monkeypatch)
    launched = threading.Event()
    bench.start(after=launched)
    bench.start(after=None)  # later matches change nothing: it starts once
    time.sleep(0.3)
    assert FakeCpu.started == [] and bench.take() is None
    launched.set()
    assert wake.wait(10)
    assert len(FakeCpu.started) == 1
    taken = bench.take()
    assert taken is not None and taken[0].facts("cpu")["benchmark"] == 12.5


def test_benchmark_starts_at_once_when_nothing_matched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bench, wake = _benchmark(tmp_path, monkeypatch)
    bench.start(after=None)
    assert wake.wait(10) and len(FakeCpu.started) == 1


def test_first_job_runs_before_the_benchmark_and_the_next_match_has_it(
    stub: Stub, tmp_path: Path
) -> None:
    marker = tmp_path / "first-started"
    stub.submit(f'Executable = "/bin/sh"; Arguments = "-c \'date +%s.%N > {marker}; sleep 2\'";')
    stub.submit('Executable = "/bin/true";')
    config = tmp_path / "pilot.toml"
    config.write_text("[checks.cpu]\nbenchmark_seconds = 0.2\nbenchmark_max_copies = 1\n")
    done = run_pilot(
        ["run", "--server", stub.url, "--config", str(config), "--max-concurrent", "1",
         "--idle-timeout", "1", "--check-timeout", "20", "--log-level", "DEBUG"],
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    log = done.stdout + done.stderr
    assert marker.is_file()  # the first payload ran
    assert "CPU power" in log, log[-3000:]  # folded in before the second match
    assert log.index("job 1: running") < log.index("CPU power")
    (pilot,) = stub.client.pilots()
    cpu = next(r for r in pilot["checks"]["results"] if r["name"] == "cpu")
    assert cpu["facts"]["benchmark_copies"] == 1  # the registration was updated with it


class QuickFirst:
    """A VO-style check that may finish after the first match: no name the agent knows."""

    name, required, timeout = "vo-sampler", False, None
    first_pass_options = {"deep": False}

    def __init__(self) -> None:
        self.seen: list[object] = []

    def run(self, ctx: CheckContext) -> CheckOutcome:
        self.seen.append(ctx.option(self.name, "deep", True))
        return CheckOutcome(Status.PASSED, "sampled", facts={"deep": self.seen[-1]})


def test_any_check_with_first_pass_options_finishes_after_the_first_match(
    tmp_path: Path,
) -> None:
    check, plain = QuickFirst(), FakeCpu()
    FakeCpu.name = "not-cpu"  # the agent goes by the attribute, not by a name
    try:
        config = PilotConfig(work_dir=tmp_path, checks={"vo-sampler": {"level": 2}})
        later = agent.finishing_later(config, [plain, check])
        assert later == (check,)
        _, report, _ = agent.inspect_node(config, "stamp", checks=[plain, check], first_pass=later)
        assert check.seen == [False] and report.facts("vo-sampler") == {"deep": False}
        wake = threading.Event()
        bench = agent.Benchmark(config, batch.detect(), report, "stamp", wake, later)
        bench.start()
        assert wake.wait(10)
        taken = bench.take()
        assert check.seen == [False, True]
        assert taken is not None and taken[0].facts("vo-sampler") == {"deep": True}
        assert [r.name for r in taken[0].results] == ["not-cpu", "vo-sampler"]
        disabled = PilotConfig(work_dir=tmp_path, disable_check=["vo-sampler"])
        assert agent.finishing_later(disabled, [plain, check]) == ()
    finally:
        FakeCpu.name = "cpu"


def test_finishing_later_leaves_the_other_checks_results_alone(tmp_path: Path) -> None:
    """The full pass runs only the deferred checks: a check required by the configuration
    is not in that run, and must not come back from it as "required check not found"."""

    class Disk:
        name, required, timeout = "disk", False, None

        def run(self, ctx: CheckContext) -> CheckOutcome:
            return CheckOutcome(Status.PASSED, "room", facts={"free_mb": 5000}, tags=("SSD",))

    config = PilotConfig(work_dir=tmp_path, require_check=["disk"])
    checks = [Disk(), FakeCpu()]
    _, report, _ = agent.inspect_node(config, "stamp", checks=checks, first_pass=[checks[1]])
    assert report.ok
    wake = threading.Event()
    bench = agent.Benchmark(config, batch.detect(), report, "stamp", wake, [checks[1]])
    bench.start()
    assert wake.wait(10)
    taken = bench.take()
    assert taken is not None
    merged, desc = taken
    assert merged.ok and [r.name for r in merged.results] == ["disk", "cpu"]
    assert merged.facts("disk") == {"free_mb": 5000} and "SSD" in desc.tags
    assert desc.disk_space_mb == 5000 and desc.pilot_benchmark == 12.5
