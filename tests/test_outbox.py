"""The outbox on its own: journaled before sending, in order per job, retried within its
budget, refusals final, and what a dead pilot left is sent by the next one."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from pilot.backends import outbox as outbox_module
from pilot.backends.base import JobStatus, MatchedJob, StatusUpdate
from pilot.backends.outbox import Outbox, OutboxBackend, RetryBudget
from pilot.errors import AuthError, ServerError, ServerUnreachable

FAST = RetryBudget(retry_for=5.0, min_wait=0.01, max_wait=0.02)


class FlakyBackend:
    """Fails the first ``failures`` calls with ``error``, then records what it is sent."""

    name = "flaky"

    def __init__(self, failures: int = 0, error: Exception | None = None) -> None:
        self.failures = failures
        self.error = error or ServerUnreachable("down")
        self.calls = 0
        self.sent: list[tuple[str, Any]] = []
        self.lock = threading.Lock()

    def _maybe_fail(self) -> None:
        with self.lock:
            self.calls += 1
            if self.failures > 0:
                self.failures -= 1
                raise self.error

    def set_status(self, job: MatchedJob, update: StatusUpdate) -> None:
        self.set_statuses(job, [update])

    def set_statuses(self, job: MatchedJob, updates: Sequence[StatusUpdate]) -> None:
        self._maybe_fail()
        self.sent.extend((job.job_id, (u.status, u.minor)) for u in updates)

    def store_output_sandbox(self, job: MatchedJob, archive: Path) -> None:
        self._maybe_fail()
        self.sent.append((job.job_id, ("output", archive.read_text())))

    def store_lfn(self, job: MatchedJob, lfn: str, source: Path) -> None:
        self._maybe_fail()
        self.sent.append((job.job_id, ("lfn", lfn)))

    def poll_commands(self, job_ids: Sequence[str]) -> list[tuple[str, str]]:
        return []

    def heartbeat(self, job: MatchedJob, metrics: Mapping[str, Any]) -> tuple[str, ...]:
        return ()


JOB = MatchedJob("7", "", "secret-token")


def statuses(backend: OutboxBackend) -> None:
    backend.set_status(JOB, StatusUpdate(JobStatus.RUNNING, "Application"))
    backend.set_status(JOB, StatusUpdate(JobStatus.COMPLETING, "Uploading Output Sandbox"))
    backend.set_status(JOB, StatusUpdate(JobStatus.DONE, "Execution Complete"))


def test_delivered_in_order_after_retries_and_journal_removed(tmp_path: Path) -> None:
    inner = FlakyBackend(failures=3)
    outbox = Outbox(inner, tmp_path / "outbox", FAST)
    backend = OutboxBackend(inner, outbox)  # type: ignore[arg-type]
    archive = tmp_path / "out.tar"
    archive.write_text("payload output")
    backend.set_status(JOB, StatusUpdate(JobStatus.RUNNING, "Application"))
    backend.store_output_sandbox(JOB, archive)  # waits for its delivery
    backend.set_status(JOB, StatusUpdate(JobStatus.DONE, "Execution Complete"))
    assert outbox.drain(10) == 0
    assert [what for _, what in inner.sent] == [
        (JobStatus.RUNNING, "Application"),
        ("output", "payload output"),
        (JobStatus.DONE, "Execution Complete"),
    ]
    assert inner.calls == 3 + 3
    assert list((tmp_path / "outbox").iterdir()) == []  # all delivered: nothing owed


def test_given_up_after_the_budget_and_left_in_the_journal(tmp_path: Path) -> None:
    inner = FlakyBackend(failures=10**6)
    budget = RetryBudget(retry_for=0.3, min_wait=0.01, max_wait=0.05)
    outbox = Outbox(inner, tmp_path / "outbox", budget)
    statuses(OutboxBackend(inner, outbox))  # type: ignore[arg-type]
    assert outbox.drain(10) == 3  # merged into one call, given up together
    assert inner.sent == []
    journal = tmp_path / "outbox" / "job-7.jsonl"
    records = [json.loads(line) for line in journal.read_text().splitlines()]
    assert records[0] == {"job": "7", "token": "secret-token"}
    assert [r["minor"] for r in records if "seq" in r] == [
        "Application",
        "Uploading Output Sandbox",
        "Execution Complete",
    ]
    assert journal.stat().st_mode & 0o077 == 0  # it holds the job token: owner only

    # A later pilot on the same work directory sends what is owed (the stub takes the
    # repeats of anything that did arrive as no-ops).
    later = FlakyBackend()
    again = Outbox(later, tmp_path / "outbox", FAST)
    assert again.recover() == 3
    assert again.drain(10) == 0
    assert [what for _, what in later.sent] == [
        (JobStatus.RUNNING, "Application"),
        (JobStatus.COMPLETING, "Uploading Output Sandbox"),
        (JobStatus.DONE, "Execution Complete"),
    ]
    assert not journal.exists()


def test_refusals_are_final_and_not_retried(tmp_path: Path) -> None:
    for error in (AuthError("403 no", 403), ServerError("409 already Done", 409)):
        inner = FlakyBackend(failures=1, error=error)
        outbox = Outbox(inner, tmp_path / f"outbox-{error.status}", FAST)
        backend = OutboxBackend(inner, outbox)  # type: ignore[arg-type]
        backend.set_status(JOB, StatusUpdate(JobStatus.DONE, "Execution Complete"))
        assert outbox.drain(10) == 0  # refused for good: counted as delivered-or-refused
        assert inner.calls == 1


def test_a_server_error_is_retried(tmp_path: Path) -> None:
    inner = FlakyBackend(failures=2, error=ServerError("POST x: server error 500", 500))
    outbox = Outbox(inner, tmp_path / "outbox", FAST)
    statuses(OutboxBackend(inner, outbox))  # type: ignore[arg-type]
    assert outbox.drain(10) == 0
    assert len(inner.sent) == 3 and inner.failures == 0  # both failures met, then delivered


def test_retry_settings_are_checked_where_they_enter() -> None:
    import pytest

    from pilot import config
    from pilot.errors import UsageError

    cfg, _ = config.load({"retry_for": "90", "server_timeout": "5"}, env={})
    assert (cfg.retry_for, cfg.server_timeout, cfg.command_interval) == (90.0, 5.0, 20.0)
    assert config.load({}, env={})[0].retry_for is None  # until the slot ends
    for name, bad in (("server_timeout", "0"), ("retry_for", "-1"), ("command_interval", "0.1")):
        with pytest.raises(UsageError, match=f"^--{name.replace('_', '-')} .*: too small"):
            config.load({name: bad}, env={})
    with pytest.raises(UsageError, match=r"^PILOT_RETRY_FOR=soon: not a number"):
        config.load({}, env={"PILOT_RETRY_FOR": "soon"})


HEAD = '{"job":"7","token":"secret-token"}\n'


def entry(seq: int, status: str) -> str:
    fields = {"status": status, "minor": "m", "application": None, "timestamp": 1.0 + seq}
    return json.dumps({"seq": seq, "kind": "status", **fields, "extra": {}}) + "\n"


class DownForDone:
    """Takes every status but Done (one call each: no ``set_statuses``)."""

    name = "down-for-done"

    def __init__(self) -> None:
        self.sent: list[JobStatus | None] = []

    def set_status(self, job: MatchedJob, update: StatusUpdate) -> None:
        if update.status is JobStatus.DONE:
            raise ServerUnreachable("down")
        self.sent.append(update.status)


def test_recover_skips_a_line_cut_short_and_ends_it_before_appending(tmp_path: Path) -> None:
    """A pilot killed (or a disk filled) mid-line leaves a last line cut short: the entries
    before it are still sent, and the next line written does not join the broken one."""
    box = tmp_path / "outbox"
    box.mkdir()
    journal = box / "job-7.jsonl"
    journal.write_text(HEAD + entry(0, "Running") + entry(1, "Done") + '{"seq":2,"kind":"sta')
    inner = DownForDone()
    outbox = Outbox(inner, box, RetryBudget(retry_for=0.0))
    assert outbox.recover() == 2
    assert outbox.drain(10) == 1  # Running delivered, Done given up: still owed
    assert inner.sent == [JobStatus.RUNNING]
    lines = journal.read_text().splitlines()
    assert lines[-2:] == ['{"seq":2,"kind":"sta', '{"ack":0}']
    later = FlakyBackend()
    again = Outbox(later, box, FAST)
    assert again.recover() == 1  # the acknowledgement was read: only Done is owed
    assert again.drain(10) == 0
    assert [what for _, what in later.sent] == [(JobStatus.DONE, "m")]
    assert not journal.exists()


def test_recover_survives_garbled_and_foreign_journals(tmp_path: Path) -> None:
    """Nonsense in a journal (another version's records, garbage, a directory by a
    journal's name) costs the unusable entries only: no traceback, no hang."""
    box = tmp_path / "outbox"
    box.mkdir()
    (box / "job-1.jsonl").write_text('{"seq":0,"status":"Running"}\n[1,2]\n\n')  # no head
    (box / "job-2.jsonl").mkdir()
    (box / "job-3.jsonl").write_bytes(b"\xff\xfe\x00")
    (box / "job-4.jsonl").write_text(
        '{"job":"4","token":7}\n{"seq":"0","kind":"status"}\n{"seq":1}\n'
        '{"seq":2,"kind":"status","status":"Bogus","timestamp":1}\n'
        '{"seq":3,"kind":"output","archive":"/nonexistent/out.tar"}\n'
        '{"seq":4,"kind":"status","status":"Done","minor":"m","timestamp":"soon"}\n'
        '{"seq":5,"kind":"teleport"}\n' + entry(6, "Done")
    )
    inner = FlakyBackend()
    outbox = Outbox(inner, box, FAST)
    assert outbox.recover() == 5  # job 4's well-formed entries: 2, 3, 4, 5 and 6
    assert outbox.drain(10) == 0  # the unusable ones refused for good: nothing hangs
    assert [what for _, what in inner.sent] == [(JobStatus.DONE, "m")]
    assert not (box / "job-4.jsonl").exists()
    assert sorted(p.name for p in box.iterdir()) == ["job-1.jsonl", "job-2.jsonl", "job-3.jsonl"]


def test_an_upload_given_up_is_the_jobs_failure_not_a_debt(tmp_path: Path) -> None:
    """The job is reported Failed when its upload is given up: a later pilot must not
    send that upload (the outbox's copy of the archive is gone by then anyway)."""
    inner = FlakyBackend(failures=10**6)
    box = tmp_path / "outbox"
    outbox = Outbox(inner, box, RetryBudget(retry_for=0.05, min_wait=0.01, max_wait=0.02))
    backend = OutboxBackend(inner, outbox)  # type: ignore[arg-type]
    archive = tmp_path / "out.tar"
    archive.write_text("payload output")
    try:
        backend.store_output_sandbox(JOB, archive)
    except ServerUnreachable:
        pass
    else:
        raise AssertionError("the upload was given up: its caller must hear of it")
    inner.failures = 0
    backend.set_status(JOB, StatusUpdate(JobStatus.FAILED, "Output sandbox upload failed"))
    assert outbox.drain(10) == 0
    assert [what for _, what in inner.sent] == [(JobStatus.FAILED, "Output sandbox upload failed")]
    assert list(box.iterdir()) == []  # nothing owed, no copy left behind


def test_recovered_upload_removes_the_outbox_copy_of_its_archive(tmp_path: Path) -> None:
    """A pilot killed while its upload was retried leaves the archive's copy in the
    outbox; the later pilot that sends it removes it."""
    box = tmp_path / "outbox"
    box.mkdir()
    (box / "out-7.tar").write_text("payload output")
    upload = {"seq": 1, "kind": "output", "archive": str(box / "out-7.tar")}
    journal = HEAD + entry(0, "Running") + '{"ack":0}\n' + json.dumps(upload) + "\n"
    (box / "job-7.jsonl").write_text(journal)
    inner = FlakyBackend()
    outbox = Outbox(inner, box, FAST)
    assert outbox.recover() == 1
    assert outbox.drain(10) == 0
    assert [what for _, what in inner.sent] == [("output", "payload output")]
    assert list(box.iterdir()) == []


class Hanging(FlakyBackend):
    """Every status call hangs (a server that takes the request and never answers)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def set_statuses(self, job: MatchedJob, updates: Sequence[StatusUpdate]) -> None:
        self.release.wait(60)
        raise ServerUnreachable("timed out")


def test_calls_in_flight_hold_the_end_up_join_s_in_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """drain() waits for calls still in flight JOIN_S seconds in all, not per job."""
    monkeypatch.setattr(outbox_module, "JOIN_S", 1.0)
    inner = Hanging()
    outbox = Outbox(inner, tmp_path / "outbox", FAST)
    backend = OutboxBackend(inner, outbox)  # type: ignore[arg-type]
    for job_id in "123":
        backend.set_status(MatchedJob(job_id, "", "t"), StatusUpdate(JobStatus.DONE, "x"))
    start = time.monotonic()
    assert outbox.drain(0.0) == 3
    assert time.monotonic() - start < 2.5  # one JOIN_S, not three
    inner.release.set()


def test_a_stop_signal_during_the_final_drain_cuts_it_to_the_grace_time(tmp_path: Path) -> None:
    """The pilot's last wait for its reports (retried until the slot ends) hears a stop
    signal: --grace seconds more, then it exits with the rest journaled."""
    inner = FlakyBackend(failures=10**6)
    far = RetryBudget(slot_end=time.monotonic() + 3600, min_wait=0.01, max_wait=0.02)
    outbox = Outbox(inner, tmp_path / "outbox", far)
    backend = OutboxBackend(inner, outbox)  # type: ignore[arg-type]
    backend.set_status(JOB, StatusUpdate(JobStatus.DONE, "x"))
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    result: list[int] = []
    drain = threading.Thread(target=lambda: result.append(outbox.drain(stop=stop, grace=0.2)))
    drain.start()
    drain.join(10)
    assert result == [1]  # ended in time, the Done status journaled as owed


def test_a_journal_on_a_full_disk_costs_only_its_survival(tmp_path: Path) -> None:
    """Writes to the journal fail with ENOSPC (it is /dev/full): the entries are still
    delivered, in order, and nothing hangs or raises."""
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    box = tmp_path / "outbox"
    box.mkdir()
    (box / "job-7.jsonl").symlink_to("/dev/full")
    inner = FlakyBackend(failures=2)
    outbox = Outbox(inner, box, FAST)
    statuses(OutboxBackend(inner, outbox))  # type: ignore[arg-type]
    assert outbox.drain(10) == 0
    assert [what for _, what in inner.sent] == [
        (JobStatus.RUNNING, "Application"),
        (JobStatus.COMPLETING, "Uploading Output Sandbox"),
        (JobStatus.DONE, "Execution Complete"),
    ]


def test_a_journal_a_running_pilot_holds_is_left_to_it(tmp_path: Path) -> None:
    """Pilots sharing a --work-dir: one starting later does not take over the journals of
    one still running (it would send them too, and remove them while they are written);
    the lock goes with the pilot, kill -9 included, so a dead pilot's journals are sent."""
    box = tmp_path / "outbox"
    inner = FlakyBackend(failures=10**6)
    running = Outbox(inner, box, RetryBudget(retry_for=30.0, min_wait=0.01, max_wait=0.02))
    statuses(OutboxBackend(inner, running))  # type: ignore[arg-type]
    later = FlakyBackend()
    starting = Outbox(later, box, FAST)
    assert starting.recover() == 0
    assert starting.drain(5) == 0
    assert later.sent == []
    assert (box / "job-7.jsonl").exists()
    inner.failures = 0  # the server is back: the running pilot delivers its own
    assert running.drain(10) == 0
    assert [what for _, what in inner.sent] == [
        (JobStatus.RUNNING, "Application"),
        (JobStatus.COMPLETING, "Uploading Output Sandbox"),
        (JobStatus.DONE, "Execution Complete"),
    ]
    assert not (box / "job-7.jsonl").exists()


class RefusesToken(FlakyBackend):
    """Unreachable for reports carrying ``token`` (an earlier run's), takes the others."""

    def __init__(self, token: str) -> None:
        super().__init__()
        self.token = token
        self.tokens: list[str | None] = []

    def set_statuses(self, job: MatchedJob, updates: Sequence[StatusUpdate]) -> None:
        if job.token == self.token:
            raise ServerUnreachable("down for this token")
        self.tokens.extend(job.token for _ in updates)
        super().set_statuses(job, updates)


def test_a_job_matched_again_reports_with_its_new_token_beside_a_recovered_journal(
    tmp_path: Path,
) -> None:
    """A journal of job 7 left by an earlier pilot is still being retried when this pilot
    matches job 7 again (rescheduled meanwhile): the new run's reports go with the new
    token, in a journal of their own, and the old journal keeps its own token."""
    box = tmp_path / "outbox"
    box.mkdir()
    (box / "job-7.jsonl").write_text(HEAD + entry(0, "Done"))
    inner = RefusesToken("secret-token")
    outbox = Outbox(inner, box, RetryBudget(retry_for=30.0, min_wait=0.01, max_wait=0.02))
    assert outbox.recover() == 1
    again = MatchedJob("7", "", "new-token")
    wrapped = OutboxBackend(inner, outbox)  # type: ignore[arg-type]
    wrapped.set_status(again, StatusUpdate(JobStatus.RUNNING, "Application"))
    assert sorted(p.name for p in box.iterdir()) == ["job-7.1.jsonl", "job-7.jsonl"]
    wrapped.set_status(again, StatusUpdate(JobStatus.DONE, "Execution Complete"))
    deadline = time.monotonic() + 10
    while (box / "job-7.1.jsonl").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert inner.tokens == ["new-token", "new-token"]
    assert [what for _, what in inner.sent] == [
        (JobStatus.RUNNING, "Application"),
        (JobStatus.DONE, "Execution Complete"),
    ]
    assert sorted(p.name for p in box.iterdir()) == ["job-7.jsonl"]  # still owed, its token
    assert json.loads((box / "job-7.jsonl").read_text().splitlines()[0])["token"] == (
        "secret-token"
    )
    outbox.hurry(0)
    outbox.drain(5)


def test_a_malformed_commands_answer_is_a_server_error_not_a_dead_poll() -> None:
    """The command poll thread catches the pilot's errors only: a reply that is not a list
    of commands used to end it (KeyError), and kills then waited for heartbeats."""
    from pilot.backends.stub import StubBackend

    class Answers:
        def __init__(self, answer: Any) -> None:
            self.answer = answer

        def json(self, *args: Any, **kwargs: Any) -> Any:
            return self.answer

    job = MatchedJob("7", "", token="t")
    for bad in ({"job_id": 7}, [{"command": "Kill"}], [7], "Kill"):
        backend = StubBackend(Answers(bad))  # type: ignore[arg-type]
        with pytest.raises(ServerError, match="not a list of commands"):
            backend.poll_commands(["7"])
        with pytest.raises(ServerError, match="not a list of commands"):
            backend.heartbeat(job, {})
    good = StubBackend(Answers([{"job_id": 7, "command": "Kill"}]))  # type: ignore[arg-type]
    assert good.poll_commands(["7"]) == [("7", "Kill")]
    assert good.heartbeat(job, {}) == ("Kill",)
