"""The watchdog (pilot.job.proctable, .limits, .heartbeat): the process table, stall
detection, heartbeats and kill commands."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from pilot.backends.base import MatchedJob
from pilot.errors import AuthError, ServerUnreachable
from pilot.job import heartbeat, proctable
from pilot.job import limits as job_limits
from tests.conftest import FAST, Stub
from tests.payloads.support import (
    PAYLOADS,
    PYTHON,
    kill_marked,
    minor_statuses,
    new_mark,
    payload_jdl,
    start_pilot,
    wait_for,
)


def usage(**values: float | None) -> job_limits.Usage:
    base: dict[str, Any] = {
        "wall": 10.0,
        "cpu": 5.0,
        "rss_mb": 10.0,
        "vsize_mb": 20.0,
        "processes": 1,
        "disk_mb": 1.0,
        "free_mb": 10000.0,
    }
    base.update(values)
    return job_limits.Usage(**base)


def test_parse_stat_survives_hostile_command_names() -> None:
    tail = b"S 1 2 3 0 -1 0 0 0 0 0 250 50 100 0 20 0 1 0 777 4096 3 18446744073709551615"
    stat = proctable.parse_stat(42, b"42 (a) b) (c) " + tail)
    assert stat is not None
    assert (stat.ppid, stat.pgid, stat.sid, stat.state, stat.start) == (1, 2, 3, "S", 777)
    assert stat.cpu == pytest.approx(300 / proctable.CLK_TCK)
    assert stat.cpu_children == pytest.approx(100 / proctable.CLK_TCK)
    assert (stat.vsize, stat.rss) == (4096, 3 * proctable.PAGE_SIZE)
    assert proctable.parse_stat(42, b"42 (x) S 1") is None


def test_tree_follows_descendants_and_counts_their_usage(tmp_path: Path) -> None:
    mark = new_mark("tree")
    script = (
        "import subprocess, sys, time\n"
        f"kids = [subprocess.Popen([sys.executable, {str(PAYLOADS / 'sleeper.py')!r}, "
        f"{mark!r}], stdout=subprocess.PIPE) for _ in range(3)]\n"
        # each child says so once its interpreter is up (else its RSS may still be tiny)
        "[kid.stdout.readline() for kid in kids]\n"
        "print('ready', flush=True)\ntime.sleep(60)\n"
    )
    main = subprocess.Popen([PYTHON, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert main.stdout is not None and main.stdout.readline() == "ready\n"
        tree = proctable.ProcessTree(main.pid, "unused")
        sampler = job_limits.Sampler(tree, tmp_path, time.monotonic())
        got, live = sampler.sample()
        assert sorted(s.pid for s in live)[0] == main.pid
        assert got.processes == 4
        assert got.rss_mb > 4 * 5  # four Python interpreters
        assert got.cpu > 0
        assert got.free_mb is not None and got.free_mb > 0
    finally:
        main.kill()
        main.wait()
        kill_marked(mark)


def test_dir_size_counts_blocks_not_apparent_size(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "data").write_bytes(os.urandom(3 << 20))
    with (tmp_path / "sparse").open("wb") as fh:
        fh.truncate(1 << 30)  # 1 GiB apparent, no blocks
    os.symlink("/usr", tmp_path / "link")  # not followed
    assert 3.0 <= job_limits.dir_size_mb(tmp_path) < 3.5


L = job_limits.Limits
LIMIT_CASES = [
    (L(memory_mb=100, memory_source="MaxRAM 1"), {"rss_mb": 101}, "memory limit (MaxRAM 1)"),
    (L(cpu_normalised=60, benchmark=10), {"cpu": 6.5}, "CPU time limit (CPUTime 60 normalised s)"),
    (L(wall_seconds=20, wall_source="W 2"), {"wall": 21}, "wall clock time limit (W 2)"),
    (L(max_processes=10), {"processes": 11}, "process limit (10 processes)"),
    (L(disk_mb=50), {"disk_mb": 51}, "disk limit (job directory over 50 MB)"),
    (L(min_free_disk_mb=100), {"free_mb": 99}, "disk limit (free space below 100 MB)"),
]  # fmt: skip


@pytest.mark.parametrize(("limits", "values", "minor"), LIMIT_CASES)
def test_each_limit_names_itself(
    limits: job_limits.Limits, values: dict[str, float], minor: str
) -> None:
    checker = job_limits.LimitChecker(limits)
    assert checker.check(usage()) is None  # the defaults are within every limit
    assert checker.check(usage(**values)) == f"Job exceeded {minor}"


def test_no_limit_means_no_verdict() -> None:
    huge = usage(rss_mb=1e9, cpu=1e9, wall=1e9, processes=10**6, disk_mb=1e9, free_mb=0)
    assert job_limits.LimitChecker(job_limits.Limits()).check(huge) is None


def test_stalled_needs_a_whole_window_below_the_fraction() -> None:
    window = job_limits.Limits(stalled_window=60, stalled_cpu_fraction=0.05)
    checker = job_limits.LimitChecker(window)
    verdicts = [checker.check(usage(wall=t, cpu=t * 0.01)) for t in range(0, 60, 5)]
    assert verdicts == [None] * 12  # not a full window yet
    minor = "Job stalled: CPU/wall below 5% for 60 s"
    assert checker.check(usage(wall=60, cpu=0.6)) == minor


def test_a_burst_of_cpu_inside_the_window_is_not_stalled() -> None:
    window = job_limits.Limits(stalled_window=60, stalled_cpu_fraction=0.05)
    checker = job_limits.LimitChecker(window)
    cpu = 0.0
    for t in range(0, 125, 5):
        cpu += 4.0 if t == 100 else 0.0  # 4 s of CPU in the last minute: 6.7 %
        verdict = checker.check(usage(wall=t, cpu=cpu))
        assert (verdict is not None) == (60 <= t < 100), t


class RecordingBackend:
    """Answers heartbeats like a server would; records what it got."""

    name = "recording"

    def __init__(self, answers: list[tuple[str, ...] | Exception]) -> None:
        self.answers = answers
        self.beats: list[Mapping[str, Any]] = []

    def heartbeat(self, job: MatchedJob, metrics: Mapping[str, Any]) -> tuple[str, ...]:
        self.beats.append(metrics)
        answer = self.answers.pop(0) if self.answers else ()
        if isinstance(answer, Exception):
            raise answer
        return answer


def beat_until_cancel(answers: list[tuple[str, ...] | Exception]) -> tuple[str, RecordingBackend]:
    backend = RecordingBackend(answers)
    monitor = heartbeat.Monitor(Path("/"))
    monitor.publish(usage(cpu=1.5, wall=3.0, rss_mb=12.34, vsize_mb=56.78))
    monitor.follow_output(lambda: "last line")
    reasons: list[str] = []
    done = threading.Event()

    def cancel(reason: str) -> None:
        reasons.append(reason)
        done.set()

    beat = heartbeat.Heartbeat(backend, MatchedJob("7", ""), monitor, 0.05, cancel)  # type: ignore[arg-type]
    beat.start()
    done.wait(10)
    beat.stop()
    return reasons[0], backend


def test_heartbeat_sends_usage_and_applies_kill() -> None:
    down = ServerUnreachable("down")
    reason, backend = beat_until_cancel([(), down, ("Kill",)])
    assert reason == "Killed by user"
    assert len(backend.beats) == 3  # a failed beat does not stop the next ones
    sent = backend.beats[0]
    assert sent["CPUConsumed"] == 1.5 and sent["WallClockTime"] == 3.0
    assert sent["MemoryUsed"] == 12.3 and sent["Vsize"] == 56.8
    assert sent["StandardOutput"] == "last line"
    assert {"LoadAverage", "AvailableDiskSpace"} <= set(sent)


def test_heartbeat_refused_means_the_job_is_no_longer_ours() -> None:
    reason, _ = beat_until_cancel([AuthError("job token does not grant access", 403)])
    assert reason == "Job no longer assigned to this pilot"


def test_kill_from_the_server_reaches_the_payload_within_one_interval(
    stub: Stub, tmp_path: Path
) -> None:
    mark = new_mark("kill")
    (job,) = stub.submit(payload_jdl("sleeper.py", mark))
    pilot = start_pilot(
        stub, tmp_path, "--heartbeat-interval", "0.5", "--sample-interval", "0.2", *FAST
    )
    try:
        assert wait_for(lambda: ("Running", "Application") in minor_statuses(stub, job), 30)
        beat = wait_for(lambda: stub.client.job(job)["heartbeat"], 10)
        assert isinstance(beat, dict) and beat["StandardOutput"] == "sleeping"
        asked = time.monotonic()
        stub.client.kill(job)
        assert wait_for(lambda: stub.status(job) == "Killed", 10)
        assert time.monotonic() - asked < 0.5 + 0.25 + 2.0  # one interval, one tick, slack
        assert pilot.wait(30) == 0
    finally:
        if pilot.poll() is None:
            pilot.kill()
        kill_marked(mark)
    info = stub.client.job(job)
    assert info["minor_status"] == "Killed by user"
    assert ("Running", "Kill requested") in minor_statuses(stub, job)
    out = tmp_path / "o"
    stub.client.get_output(job, out)
    assert (out / "out").read_text() == "sleeping\n"
