"""pilot.job.execute on its own: real payload processes, no server.

Most tests run the payload from the test process itself. Those that need the pilot to
be the child subreaper (daemons re-parenting to it) run a small driver in a child
Python process, so that the test session itself never becomes a subreaper.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from pilot.backends.base import JobStatus, MatchedJob, StatusUpdate
from pilot.job import execute, heartbeat, jobrun, proctable
from pilot.job import limits as job_limits
from tests.payloads.support import (
    MARK_ENV,
    PAYLOADS,
    PYTHON,
    describe,
    kill_marked,
    marked_processes,
    new_mark,
    wait_for,
)


def make_spec(
    tmp: Path, argv: list[str], mark: str = "", **supervision: object
) -> execute.ExecutionSpec:
    job = tmp / "job"
    job.mkdir(exist_ok=True)
    sup = {"sample_interval": 0.1, "grace": 1.0, **supervision}
    return execute.ExecutionSpec(
        argv=tuple(argv),
        cwd=job,
        env={"PATH": "/usr/bin:/bin", MARK_ENV: mark or new_mark("exec")},
        stdout=job / "out",
        stderr=job / "err",
        supervision=execute.Supervision(**sup),  # type: ignore[arg-type]
    )


@pytest.fixture
def mark() -> object:
    value = new_mark("exec")
    yield value
    kill_marked(value)


def test_exit_code_streams_environment_stdin_and_session(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import json, os, sys
        print(json.dumps({
            "session_leader": os.getsid(0) == os.getpid(),
            "group_leader": os.getpgid(0) == os.getpid(),
            "stdin": os.readlink("/proc/self/fd/0"),
            "env": sorted(os.environ),
            "cwd": os.getcwd(),
        }))
        print("to stderr", file=sys.stderr)
        sys.exit(3)
        """
    )
    spec = make_spec(tmp_path, [PYTHON, "-c", script])
    result = execute.run(spec)
    assert (result.exit_code, result.signal, result.ending) == (3, None, None)
    seen = json.loads((spec.cwd / "out").read_text())
    assert seen["session_leader"] and seen["group_leader"]
    assert seen["stdin"] == "/dev/null"
    env = set(seen["env"]) - {"LC_CTYPE"}  # Python may set LC_CTYPE in itself (PEP 538)
    assert env == {MARK_ENV, "PATH", proctable.MARK_VAR}
    assert seen["cwd"] == str(spec.cwd)
    assert (spec.cwd / "err").read_text() == "to stderr\n"


def test_merged_streams_and_signal_death(tmp_path: Path) -> None:
    script = "import os, sys; print('out', flush=True); print('err', file=sys.stderr, flush=True);"
    script += " os.kill(os.getpid(), 9)"
    spec = make_spec(tmp_path, [PYTHON, "-c", script])
    spec = execute.ExecutionSpec(**{**spec.__dict__, "stderr": spec.stdout})
    result = execute.run(spec)
    assert (result.exit_code, result.signal) == (None, 9)
    assert sorted((spec.cwd / "out").read_text().split()) == ["err", "out"]


def test_missing_executable_is_a_launch_error_and_leaks_nothing(tmp_path: Path) -> None:
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(execute.LaunchError, match="cannot run /no/such/payload"):
        execute.run(make_spec(tmp_path, ["/no/such/payload"]))
    assert len(os.listdir("/proc/self/fd")) == before


def test_cancel_sends_sigterm_then_sigkill_after_grace(tmp_path: Path, mark: str) -> None:
    spec = make_spec(tmp_path, [PYTHON, str(PAYLOADS / "ignore_term.py"), mark], mark, grace=1.0)
    cancel = execute.Cancel()
    threading.Timer(1.0, cancel.set, args=("pilot received SIGTERM",)).start()
    threading.Timer(1.5, cancel.set, args=("second reason loses",)).start()
    start = time.monotonic()
    result = execute.run(spec, cancel)
    elapsed = time.monotonic() - start
    assert result.ending == execute.Ending(execute.EndKind.CANCELLED, "pilot received SIGTERM")
    assert result.signal == 9
    assert 2.0 <= elapsed < 1.0 + 1.0 + 3.0  # needed the whole grace, and not much more
    assert describe(marked_processes(mark)) == []


def test_cancel_of_a_polite_payload_is_quick(tmp_path: Path, mark: str) -> None:
    spec = make_spec(tmp_path, [PYTHON, str(PAYLOADS / "sleeper.py"), mark], mark, grace=30.0)
    cancel = execute.Cancel()
    threading.Timer(0.5, cancel.set, args=("Killed by user",)).start()
    start = time.monotonic()
    result = execute.run(spec, cancel)
    assert result.signal == 15 and result.ending is not None
    assert time.monotonic() - start < 5.0  # far below the grace: SIGTERM was enough


def test_leftover_children_are_killed_when_the_main_process_ends(tmp_path: Path, mark: str) -> None:
    script = textwrap.dedent(
        f"""
        import subprocess, sys, time
        subprocess.Popen([sys.executable, {str(PAYLOADS / "sleeper.py")!r}, {mark!r}])
        time.sleep(0.5)
        print("parent done")
        """
    )
    result = execute.run(make_spec(tmp_path, [PYTHON, "-c", script], mark))
    assert (result.exit_code, result.ending, result.leftovers) == (0, None, 1)
    assert describe(marked_processes(mark)) == []


def test_output_cap_truncates_and_ends_the_job(tmp_path: Path) -> None:
    spec = make_spec(
        tmp_path, [PYTHON, str(PAYLOADS / "flood.py"), "m", "20"], max_stdout_bytes=1 << 20
    )
    result = execute.run(spec)
    assert result.truncated == ("stdout",)
    assert result.ending is not None and result.ending.kind is execute.EndKind.LIMIT
    assert result.ending.minor == "Job exceeded output limit (stdout truncated at 1 MB)"
    data = (spec.cwd / "out").read_bytes()
    assert data.endswith(execute.TRUNCATION_NOTE)
    assert len(data) == (1 << 20) + len(execute.TRUNCATION_NOTE)


def test_unwritable_output_is_reported_and_never_blocks_the_payload(tmp_path: Path) -> None:
    """/dev/full: every write fails with ENOSPC, as on a full work directory."""
    spec = make_spec(tmp_path, [PYTHON, str(PAYLOADS / "flood.py"), "m", "4"])
    spec = execute.ExecutionSpec(**{**spec.__dict__, "stdout": Path("/dev/full")})
    started = time.monotonic()
    result = execute.run(spec)
    assert time.monotonic() - started < 20  # 4 MB through a 64 KB pipe: it kept draining
    assert result.exit_code == 0 and result.ending is None
    assert result.unsaved == ("stdout: No space left on device",)
    assert result.truncated == ()


def test_limits_end_the_job_with_their_reason(tmp_path: Path, mark: str) -> None:
    limits = job_limits.Limits(memory_mb=60, memory_source="MaxRAM 60 MB")
    spec = make_spec(
        tmp_path, [PYTHON, str(PAYLOADS / "memhog.py"), mark, "300"], mark, limits=limits
    )
    result = execute.run(spec)
    assert result.ending == execute.Ending(
        execute.EndKind.LIMIT, "Job exceeded memory limit (MaxRAM 60 MB)"
    )
    assert 60 <= result.peak_rss_mb < 300
    assert describe(marked_processes(mark)) == []


def test_process_limit_stops_a_fork_bomb(tmp_path: Path, mark: str) -> None:
    spec = make_spec(
        tmp_path,
        [PYTHON, str(PAYLOADS / "spawner.py"), mark, "300"],
        mark,
        limits=job_limits.Limits(max_processes=20),
    )
    result = execute.run(spec)
    assert result.ending == execute.Ending(
        execute.EndKind.LIMIT, "Job exceeded process limit (20 processes)"
    )
    assert describe(marked_processes(mark)) == []


def test_cpu_time_includes_children_and_the_monitor_sees_output(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import subprocess, sys, time
        burn = "import time\\nend = time.process_time() + 0.4\\n"
        burn += "while time.process_time() < end: pass"
        subprocess.run([sys.executable, "-c", burn])
        subprocess.run([sys.executable, "-c", burn])
        for n in range(30):
            print("line", n, flush=True)
        time.sleep(0.5)
        """
    )
    monitor = heartbeat.Monitor(tmp_path)
    result = execute.run(make_spec(tmp_path, [PYTHON, "-c", script]), monitor=monitor)
    assert result.exit_code == 0
    assert result.cpu_time >= 0.8
    metrics = monitor.metrics()
    assert metrics["CPUConsumed"] >= 0.8
    assert metrics["StandardOutput"].splitlines() == [f"line {n}" for n in range(10, 30)]


DRIVER = textwrap.dedent(
    """
    import json, sys, threading, time
    from pathlib import Path
    import psutil
    from pilot.job import execute, proctable
    from pilot import proc

    assert execute.become_subreaper()
    proctable.STALE_ZOMBIE_S = 0.3  # the setsid intermediate dies unseen: reaped when stale
    job = Path(sys.argv[1])
    spec = execute.ExecutionSpec(
        argv=(sys.executable, sys.argv[2], sys.argv[3]), cwd=job, env={"HOSTILE_MARK": sys.argv[3]},
        stdout=job / "out", stderr=job / "err",
        supervision=execute.Supervision(sample_interval=0.1, grace=1.0),
    )
    codes = []
    def helpers():
        for _ in range(40):
            codes.append(proc.run(["sh", "-c", "exit 7"], timeout=10).returncode)
    side = threading.Thread(target=helpers)
    side.start()
    results = [execute.run(spec) for _ in range(3)]
    side.join()
    time.sleep(0.5)
    proctable.reap_strays(proctable.scan())
    children = [(c.pid, c.status()) for c in psutil.Process().children()]
    print(json.dumps({
        "leftovers": [r.leftovers for r in results],
        "exit": [r.exit_code for r in results],
        "helper_codes": sorted(set(codes)),
        "children": children,
    }))
    """
)


def test_daemons_are_found_through_the_subreaper_and_reaped(tmp_path: Path, mark: str) -> None:
    """A setsid double-forked daemon re-parents to the pilot, which finds it by its mark,
    kills it and reaps it, while helper commands keep their own exit codes."""
    job = tmp_path / "job"
    job.mkdir()
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, str(job), str(PAYLOADS / "daemon.py"), mark],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["exit"] == [0, 0, 0]
    assert report["leftovers"] == [1, 1, 1]
    assert report["helper_codes"] == [7]
    assert report["children"] == []  # no zombie left behind
    assert wait_for(lambda: not marked_processes(mark), 2.0)


@pytest.mark.parametrize(
    ("name", "expected"),
    [(None, ".stdout"), ("out.txt", "out.txt"), ("logs/out.txt", "logs/out.txt"),
     ("../../etc/passwd", "passwd"), ("/etc/passwd", "passwd"), ("..", ".stdout")],
)  # fmt: skip
def test_output_files_stay_in_the_job_directory(
    tmp_path: Path, name: str | None, expected: str
) -> None:
    job = tmp_path / "job"
    job.mkdir()
    path = jobrun.stream_path(job, name, ".stdout")
    assert path == job / expected and path.parent.is_dir()


class _Statuses:
    """Just enough of a backend for JobRunner's final report."""

    def __init__(self) -> None:
        self.updates: list[StatusUpdate] = []

    def set_status(self, job: MatchedJob, update: StatusUpdate) -> None:
        self.updates.append(update)


@pytest.mark.parametrize(
    ("exit_code", "status", "minor"),
    [
        (0, JobStatus.FAILED, "Payload output not saved: stdout: No space left on device"),
        (3, JobStatus.FAILED, "Payload failed with exit code 3"),
    ],
)
def test_a_job_whose_output_was_not_saved_is_not_done(
    tmp_path: Path, exit_code: int, status: JobStatus, minor: str
) -> None:
    backend = _Statuses()
    settings = jobrun.JobSettings(work_dir=tmp_path, pilot_reference="p", site="S")
    runner = jobrun.JobRunner(backend, MatchedJob("7", "[]"), settings, 1)  # type: ignore[arg-type]
    unsaved = ("stdout: No space left on device",)
    result = execute.ExecutionResult(exit_code, None, 1.0, 0.5, unsaved=unsaved)
    note = "; ".join(jobrun.application_notes(result, 1 << 20))
    outcome = runner.conclude(result, note)
    assert (outcome.status, outcome.minor) == (status, minor)
    assert backend.updates[-1].application is not None
    assert "stdout: No space left on device (not saved)" in backend.updates[-1].application
