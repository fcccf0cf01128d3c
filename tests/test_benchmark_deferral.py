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
    monkeypatch.setattr(agent, "CpuCheck", FakeCpu)
    FakeCpu.started = []
    wake = threading.Event()
    config = PilotConfig(server="http://127.0.0.1:9", work_dir=tmp_path)
    placeholder = CheckResult("cpu", False, Status.PASSED, "benchmark deferred", 0.0)
    report = checking.CheckReport((placeholder,))
    return agent.Benchmark(config, batch.detect(), report, "stamp", wake), wake


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
