"""Task-queue matching decides exactly what a job-by-job scan of the waiting jobs decides.

The reference below is the stub's former matcher: every waiting job in order of priority
(highest first) then id, the first one without mismatches wins. Random workloads (jobs
of a few shapes and priorities, pilots with random descriptions, kills, reschedules)
run against the real store; before every match the reference reads the database and
says which job should win, and the store must claim that one.
"""

from __future__ import annotations

import io
import json
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any
from wsgiref.util import setup_testing_defaults

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pilot.job import jdl
from server_stub import matching, taskqueues
from server_stub.app import StubApp
from server_stub.sandboxes import SandboxStore
from server_stub.store import Store, StoreError

SITES = ["A.site", "B.site", "C.site"]

# Every attribute that goes into a job's task-queue key (matching.requirements) varies.
job_shapes = st.tuples(
    st.sampled_from(["", 'Site = "A.site";', 'Site = {"B.site", "C.site"};', 'Site = "ANY";']),
    st.sampled_from(["", 'BannedSites = {"A.site"};']),
    st.sampled_from(["", 'Platform = "p1";', 'Platform = {"p1", "p2"};']),
    st.sampled_from(["", 'Tags = {"GPU"};', 'Tags = {"t1"};']),
    st.sampled_from(["", 'GridCE = "ce1";', 'GridCE = {"ce1", "ce2"};']),
    st.sampled_from(
        [
            "NumberOfProcessors = 1;",
            "NumberOfProcessors = 2;",
            "NumberOfProcessors = 4;",
            "MinNumberOfProcessors = 2; MaxNumberOfProcessors = 4;",
            "MinNumberOfProcessors = 1; MaxNumberOfProcessors = 8;",
        ]
    ),
    st.sampled_from(["", "MaxRAM = 1000;", "MaxRAM = 8000;"]),
    st.sampled_from(["", 'VirtualOrganization = "vo1";', 'VirtualOrganization = "vo2";']),
    st.sampled_from(["", "WholeNode = true;"]),
    st.sampled_from([100, 5000, 50000]),  # CPU time
    st.sampled_from([1, 2, 3]),  # priority
).map(lambda s: " ".join(s[:9]) + f" CPUTime = {s[9]}; Priority = {s[10]};")

# Pilots' descriptions, with what matching ignores (PilotReference, WallClockTimeLeft,
# DiskSpace) varying too: the fit cache must not confuse two pilots that differ in
# anything matching reads, nor tell apart two that differ only in what it ignores.
resources = st.fixed_dictionaries(
    {
        "Site": st.sampled_from(SITES),
        "Platform": st.sampled_from(["p1", "p2", "p3"]),
        "NumberOfProcessors": st.sampled_from([1, 2, 4, 8]),
    },
    optional={
        "CPUTime": st.sampled_from([50, 1000, 10000, 100000]),
        "Tag": st.sampled_from([["GPU"], ["t1"], ["GPU", "t1"], ["WholeNode"]]),
        "RequiredTag": st.sampled_from([["t1"]]),
        "GridCE": st.sampled_from(["ce1", "ce2", "ce3"]),
        "MaxRAM": st.sampled_from([500, 2000, 16000]),
        "VirtualOrganization": st.sampled_from(["vo1", "vo2"]),
        "PilotReference": st.sampled_from(["ref-1", "ref-2", "ref-3"]),
        "WallClockTimeLeft": st.integers(0, 100000),
        "DiskSpace": st.sampled_from([100, 5000]),
    },
)

operations = st.lists(
    st.one_of(
        st.tuples(st.just("submit"), job_shapes, st.integers(1, 4)),
        st.tuples(st.just("match"), resources),
        st.tuples(st.just("dry"), resources),
        st.tuples(st.just("kill"), st.integers(0, 50)),
        st.tuples(st.just("stall"), st.integers(0, 50)),
    ),
    min_size=5,
    max_size=40,
)


def reference(db_path: Path, resources: dict[str, Any]) -> int | None:
    """The former matcher: scan the waiting jobs in order, first fit wins."""
    db = sqlite3.connect(db_path)
    try:
        rows = db.execute(
            "SELECT id, requirements FROM jobs WHERE status = 'Waiting' ORDER BY priority DESC, id"
        ).fetchall()
    finally:
        db.close()
    for job_id, req in rows:
        if not matching.mismatches(json.loads(req), resources):
            return int(job_id)
    return None


def _run(ops: list[tuple[Any, ...]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tq.db"
        store = Store(path)
        ids: list[int] = []
        for op in ops:
            if op[0] == "submit":
                text = f'Executable = "/bin/true"; Parameters = {op[2]}; {op[1]}'
                ids += store.submit_many(jdl.expand(jdl.parse(text)), "tester")
            elif op[0] in ("match", "dry"):
                expected = reference(path, op[1])
                claim = store.match(op[1], "p", dry_run=op[0] == "dry")
                assert (claim and claim.job_id) == expected or (claim is None is expected), (
                    op,
                    claim,
                    expected,
                )
            elif op[0] == "kill" and ids:
                job = ids[op[1] % len(ids)]
                if store.job(job)["status"] not in ("Done", "Killed", "Failed", "Deleted"):
                    store.kill(job)
            elif op[0] == "stall" and ids:
                # a matched job whose pilot went silent goes back to Waiting (rescheduled)
                job = ids[op[1] % len(ids)]
                if store.job(job)["status"] == "Matched":
                    db = sqlite3.connect(path)
                    db.execute("UPDATE jobs SET heartbeat = 0 WHERE id = ?", (job,))
                    db.commit()
                    db.close()
                    assert job in store.reap_stalled(60, max_reschedules=3)
                    assert store.job(job)["status"] == "Waiting"
        # A store opened afresh on the same file rebuilds the same queues.
        again = Store(path)
        assert len(again.queues) == len(store.queues)
        for site in SITES:
            res = {"Site": site, "Platform": "p1", "NumberOfProcessors": 4, "Tag": ["GPU"]}
            expected = reference(path, res)
            claim = again.match(res, "p", dry_run=False)
            assert (claim.job_id if claim else None) == expected


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations)
def test_grouping_changes_no_decision(ops: list[tuple[Any, ...]]) -> None:
    _run(ops)


def _submit(store: Store, extra: str, n: int = 1) -> list[int]:
    text = f'Executable = "/bin/true"; Parameters = {n}; {extra}'
    return store.submit_many(jdl.expand(jdl.parse(text)), "tester")


def test_jobs_of_one_shape_share_a_queue(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    _submit(store, 'Site = "A.site"; CPUTime = 10;', 5)
    _submit(store, 'Site = "A.site"; CPUTime = 10; Priority = 2;', 3)  # priority: another
    _submit(store, 'Site = "B.site"; CPUTime = 10;', 2)
    assert len(store.queues) == 10 and store.queues.queues == 3


def test_near_misses_name_each_unfit_queue_with_its_oldest_job(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    gpu = _submit(store, 'Tags = {"GPU"};', 4)
    other = _submit(store, 'Site = "B.site";', 3)
    fits = _submit(store, "", 1)
    res = {"Site": "A.site", "CPUTime": 100000}
    misses = store.near_misses(res)
    assert [(m["job_id"], m["waiting"]) for m in misses] == [(gpu[0], 4), (other[0], 3)]
    assert misses[0]["reasons"] == ["needs tag GPU"]
    assert misses[1]["reasons"] == ["site A.site not in job's sites B.site"]
    assert store.match(res, "p", dry_run=False).job_id == fits[0]  # type: ignore[union-attr]
    # CPU time is checked apart from the rest of the description, and named too
    short = {"Site": "A.site", "CPUTime": 10, "Tag": ["GPU"]}
    assert store.match(short, "p", dry_run=True) is None
    assert any("CPUTime 86400 > 10 left" in r for r in store.near_misses(short)[0]["reasons"])


def test_job_changed_behind_the_index_is_never_claimed(tmp_path: Path) -> None:
    """The claim is checked in the database: a job the index still lists as waiting but
    which something else moved on (here: a direct SQL update) is skipped and dropped."""
    store = Store(tmp_path / "s.db")
    first, second = _submit(store, "", 2)
    db = sqlite3.connect(tmp_path / "s.db")
    db.execute("UPDATE jobs SET status = 'Killed' WHERE id = ?", (first,))
    db.commit()
    db.close()
    claim = store.match({"Site": "A.site"}, "p", dry_run=False)
    assert claim is not None and claim.job_id == second
    assert store.job(first)["status"] == "Killed" and len(store.queues) == 0


def test_a_failed_transaction_leaves_the_index_alone(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    (job,) = _submit(store, "")
    # The status is recorded, then storing the timing fails: the transaction rolls back.
    with pytest.raises(TypeError):
        store.set_status(job, {"Status": "Killed", "Timing": object()}, 1.0)
    store.register_pilot("p", {})  # a later transaction commits nothing of the failed one
    assert store.job(job)["status"] == "Waiting" and len(store.queues) == 1
    claim = store.match({"Site": "A.site"}, "p", dry_run=False)
    assert claim is not None and claim.job_id == job


TEMPLATE_ATTRS = {
    "Arguments": ['"%s"', '"-n %n"', '"fixed"'],
    "JobName": ['"job-%n"', '"name"'],
    "StdOutput": ['"out-%s"', '"StdOut"'],
    "Site": ['"%s"', '"A.site"'],
    "CPUTime": ['"%s"', "100"],
    "Priority": ['"%s"', "2"],
    "Tags": ['{"%s"}', '{"t1"}'],
}
values = st.lists(
    st.one_of(
        st.sampled_from(["1", "5", "A.site", "x y", 'un"balanced', "it's", "-3", "1.5"]),
        st.integers(-2, 5),
    ),
    min_size=1,
    max_size=4,
)


@settings(max_examples=150, deadline=None)
@example({"Arguments": 0}, ["1", "it's"])  # only the second job's Arguments is bad
@example({"Arguments": 1, "JobName": 0, "StdOutput": 0}, [1, 2, 3])
@example({"Arguments": 0, "CPUTime": 0}, ["1", "x"])  # the second job's CPUTime is bad
@given(
    st.dictionaries(st.sampled_from(sorted(TEMPLATE_ATTRS)), st.integers(0, 2)),
    values,
)
def test_parametric_jobs_are_validated_and_queued_like_single_ones(
    choice: dict[str, int], params: list[Any]
) -> None:
    """Jobs of one parametric JDL differing only in free text (Arguments, JobName...)
    are validated by those attributes alone: the store must still accept and queue
    exactly as JobDescription.from_attrs job by job would."""
    parts = [f"{k} = {TEMPLATE_ATTRS[k][i % len(TEMPLATE_ATTRS[k])]};" for k, i in choice.items()]
    listed = ", ".join(f'"{v}"' if isinstance(v, str) else str(v) for v in params)
    text = f'Executable = "/bin/true"; Parameters = {{{listed}}}; {" ".join(parts)}'
    try:
        jobs = jdl.expand(jdl.parse(text))
    except jdl.JDLError:
        return
    expected: list[tuple[int, dict[str, Any]]] | None = []
    for attrs in jobs:
        try:
            desc = jdl.JobDescription.from_attrs(attrs)
        except jdl.JDLError:
            expected = None
            break
        expected.append((desc.priority, matching.requirements(desc)))  # type: ignore[union-attr]
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "p.db")
        try:
            ids = store.submit_many(jobs, "tester")
        except jdl.JDLError:
            assert expected is None, text
            assert store.jobs() == []
            return
        assert expected is not None, text
        db = sqlite3.connect(Path(tmp) / "p.db")
        rows = db.execute("SELECT id, priority, requirements FROM jobs ORDER BY id").fetchall()
        assert [row[0] for row in rows] == ids
        rows = [row[1:] for row in rows]
        db.close()
        assert [(p, json.loads(r)) for p, r in rows] == expected, text


def test_a_full_disk_refuses_writes_with_503_and_keeps_the_index(tmp_path: Path) -> None:
    """A write the disk has no room for (here: SQLite's page limit) is answered 503 with
    the reason; nothing of it reaches the database or the task-queue index, and the
    stub goes on once there is room again."""
    store = Store(tmp_path / "s.db")
    app = StubApp(store, SandboxStore(tmp_path / "sb", 1 << 20))  # (its indexes written)
    first = _submit(store, "", 2)
    db = store.connection()  # this thread's connection: the one the calls below use
    db.execute(f"PRAGMA max_page_count = {db.execute('PRAGMA page_count').fetchone()[0]}")
    big = f'Executable = "/bin/true"; Arguments = "{"x" * 2000}"; Parameters = 50;'
    with pytest.raises(StoreError) as refused:
        store.submit_many(jdl.expand(jdl.parse(big)), "tester")
    assert refused.value.status == 503 and "disk is full" in str(refused.value)
    env = {"REQUEST_METHOD": "POST", "PATH_INFO": "/api/jobs/jdl"}
    setup_testing_defaults(env)
    body = json.dumps(big).encode()
    env.update({"CONTENT_LENGTH": str(len(body)), "wsgi.input": io.BytesIO(body)})
    got: list[str] = []
    answer = b"".join(app(env, lambda status, headers: got.append(status)))
    assert got == ["503 Service Unavailable"] and b"disk is full" in answer
    assert [j["job_id"] for j in store.jobs()] == first and len(store.queues) == 2
    db.execute("PRAGMA max_page_count = 1073741823")  # room again
    assert len(_submit(store, "", 3)) == 3 and len(store.queues) == 5


def test_a_stub_killed_within_a_transaction_reopens_consistent(tmp_path: Path) -> None:
    """kill -9 while a transaction is open: on reopening, the index is rebuilt from what
    was committed, and the half-written jobs are nowhere."""
    script = f"""
import sys, time
from pathlib import Path
from pilot.job import jdl
from server_stub.store import Store
store = Store(Path({str(tmp_path / "s.db")!r}))
jobs = jdl.expand(jdl.parse('Executable = "/bin/true"; Parameters = 3;'))
store.submit_many(jobs, "tester")
store.match({{"Site": "A.site"}}, "p", dry_run=False)
with store.transaction() as db:
    db.execute("UPDATE jobs SET status = 'Killed' WHERE id = 2")
    db.execute("INSERT INTO jobs (jdl, status, requirements, submitted, updated)"
               " VALUES ('[]', 'Waiting', '{{}}', 1, 1)")
    print("in transaction", flush=True)
    time.sleep(60)
"""
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "in transaction\n"
    finally:
        child.kill()
        child.wait(10)
    store = Store(tmp_path / "s.db")
    assert [(j["job_id"], j["status"]) for j in store.jobs()] == [
        (1, "Matched"),
        (2, "Waiting"),
        (3, "Waiting"),
    ]
    assert len(store.queues) == 2
    claims = [store.match({"Site": "A.site"}, "p", dry_run=False) for _ in range(3)]
    assert [c.job_id if c else None for c in claims] == [2, 3, None]


@pytest.mark.parametrize(
    "nonsense",
    [
        {"CPUTime": float("nan")},
        {"CPUTime": "NaN"},
        {"CPUTime": float("-inf")},
        {"NumberOfProcessors": float("-inf")},
        {"NumberOfProcessors": "nan"},
        {"MaxRAM": float("-inf")},
    ],
)
def test_a_number_that_is_no_number_counts_as_not_given(
    tmp_path: Path, nonsense: dict[str, Any]
) -> None:
    """NaN and infinities in a pilot's description (JSON from Python may carry them):
    the task queues decide as the job-by-job matcher does, and nothing raises; like a
    value that is not a number at all, they count as not given."""
    store = Store(tmp_path / "s.db")
    _submit(store, "CPUTime = 100; MaxRAM = 100;", 2)
    resources = {"Site": "A.site", **nonsense}
    assert store.match(resources, "p", dry_run=True) is not None
    assert reference(tmp_path / "s.db", resources) == 1
    assert store.near_misses(resources) == []


class _Recording(dict[str, Any]):
    """A resource description that notes every key read from it."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.read: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> Any:
        self.read.add(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        self.read.add(str(key))
        return super().__contains__(key)


def test_the_fit_cache_key_holds_every_field_matching_reads() -> None:
    """The task queues remember fits by matching.RESOURCE_FIELDS alone: mismatches must
    read nothing else, or a new matching field would be left out of the key and two
    pilots differing in it would share an answer. Requirements that exercise every
    branch (lists given, a VO, RAM, processors) on descriptions with and without values."""
    text = (
        'Executable = "/bin/true"; Site = "A.site"; BannedSites = {"B.site"};'
        ' Platform = "p1"; GridCE = "ce1"; Tags = {"GPU"}; NumberOfProcessors = 2;'
        ' MaxRAM = 1000; VirtualOrganization = "vo1"; WholeNode = true; CPUTime = 100;'
    )
    req = matching.requirements(jdl.load(text))
    full = {
        "Site": "A.site",
        "Platform": "p2",
        "GridCE": "ce2",
        "CPUTime": 10,
        "NumberOfProcessors": 1,
        "MaxRAM": 500,
        "VirtualOrganization": "vo2",
        "Tag": ["t1"],
        "RequiredTag": ["t2"],
        "PilotReference": "ref",
        "WallClockTimeLeft": 1000,
        "DiskSpace": 100,
    }
    read: set[str] = set()
    for res in (_Recording(full), _Recording()):
        assert matching.mismatches(req, res)  # it did look (something does not fit)
        read |= res.read
    assert read <= set(matching.RESOURCE_FIELDS), read - set(matching.RESOURCE_FIELDS)
    # and the tuple names nothing matching does not read (a stale entry splits the cache)
    assert read == set(matching.RESOURCE_FIELDS)


def test_pilots_differing_only_in_what_matching_ignores_share_one_fit_entry(
    tmp_path: Path,
) -> None:
    """A real pilot's PilotReference, WallClockTimeLeft and DiskSpace change from one
    request to the next: the fits found for the first request serve the others, while
    a description differing in a field matching reads gets an entry of its own. The
    cache is bounded: the least recently used entry goes first."""
    store = Store(tmp_path / "s.db")
    _submit(store, 'Site = "A.site";', 3)
    _submit(store, 'Site = "B.site";', 3)
    queues = store.queues
    for n in range(5):
        res = {"Site": "A.site", "CPUTime": 100000 + n, "PilotReference": f"ref-{n}"}
        res |= {"WallClockTimeLeft": 5000 - n, "DiskSpace": 100 + n}
        assert store.match(res, f"p{n}", dry_run=True) is not None
    assert len(queues.cached_fits()) == 1
    assert store.match({"Site": "B.site", "PilotReference": "x"}, "q", dry_run=True)
    assert len(queues.cached_fits()) == 2
    first = queues.cached_fits()[0]
    for n in range(taskqueues.FIT_CACHE_SIZE + 5):
        queues.best({"Site": f"S{n}.site"})
    cached = queues.cached_fits()
    assert len(cached) == taskqueues.FIT_CACHE_SIZE and first not in cached


@pytest.mark.parametrize(
    ("jdl_part", "field", "fits", "unfit"),
    [
        ('Site = "A.site";', "Site", "A.site", "B.site"),
        ('Platform = "p1";', "Platform", "p1", "p2"),
        ('GridCE = "ce1";', "GridCE", "ce1", "ce2"),
        ("NumberOfProcessors = 2;", "NumberOfProcessors", 2, 1),
        ("MaxRAM = 1000;", "MaxRAM", 2000, 500),
        ('VirtualOrganization = "vo1";', "VirtualOrganization", "vo1", "vo2"),
        ('Tags = {"GPU"};', "Tag", ["GPU"], ["t1"]),
        ("", "RequiredTag", [], ["t1"]),
    ],
)
def test_a_warm_fit_cache_tells_apart_pilots_differing_in_one_matching_field(
    tmp_path: Path, jdl_part: str, field: str, fits: Any, unfit: Any
) -> None:
    store = Store(tmp_path / "s.db")
    (job,) = _submit(store, jdl_part)
    base = {"Site": "A.site", "CPUTime": 100000, "PilotReference": "r1"}
    good, bad = {**base, field: fits}, {**base, field: unfit, "PilotReference": "r2"}
    for _ in range(2):  # the second time round, both answers come from the cache
        assert reference(tmp_path / "s.db", good) == job and store.match(good, "p", dry_run=True)
        assert reference(tmp_path / "s.db", bad) is None
        assert store.match(bad, "p", dry_run=True) is None
