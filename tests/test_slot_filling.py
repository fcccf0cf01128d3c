"""Slot filling: several jobs at once in a multi-core slot, multi-core jobs taking theirs."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from pilot.job import jdl
from pilot.node import resources
from pilot.node.slot import Slot
from tests.conftest import FAST, Stub, run_pilot
from tests.payloads.support import new_mark, payload_jdl


def slot(cores: int = 8, memory: int | None = 16000) -> resources.ResourceDescription:
    return resources.ResourceDescription(
        site="T.Site.org",
        grid_ce="ce.example.org",
        ce_queue=None,
        vo=None,
        platform="Linux_x86_64_glibc-2.36",
        architecture="x86_64",
        number_of_processors=cores,
        max_ram_mb=memory,
        cpu_time=86400 * 10,
        wall_clock_time_left=86400,
        disk_space_mb=None,
        number_of_gpus=0,
        tags=("MultiProcessor", "WholeNode"),
        required_tags=(),
        pilot_reference="stamp",
        pilot_benchmark=10.0,
    )


@pytest.mark.parametrize(
    ("attributes", "free", "cores", "memory"),
    [
        ("", 8, 1, 2000),  # one core and its share of the slot's memory
        ("NumberOfProcessors = 2;", 8, 2, 4000),
        ("MinNumberOfProcessors = 2; MaxNumberOfProcessors = 6;", 4, 4, 8000),
        ("MinNumberOfProcessors = 2; MaxNumberOfProcessors = 6;", 8, 6, 12000),
        ("WholeNode = true;", 8, 8, 16000),
        ("NumberOfProcessors = 2; MaxRAM = 100;", 8, 2, 100),
        ("NumberOfProcessors = 2; MaxRAM = 0;", 8, 2, 4000),  # 0 is no request, not 0 MB
    ],
)
def test_allocation_gives_each_job_what_it_asks_for(
    attributes: str, free: int, cores: int, memory: int
) -> None:
    desc = jdl.load(f'Executable = "x"; {attributes}')
    assert Slot(slot(8)).allocation(desc, free, 16000) == (cores, memory)


def test_a_job_whose_description_did_not_parse_gets_one_core() -> None:
    assert Slot(slot(8)).allocation(None, 8, 16000) == (1, None)


def test_offer_shows_only_what_is_free() -> None:
    bookkeeping = Slot(slot(4))
    full = bookkeeping.offer(*bookkeeping.free()).as_dict()
    assert full["NumberOfProcessors"] == 4 and {"MultiProcessor", "WholeNode"} <= set(full["Tag"])
    bookkeeping.hold("1", 3, 12000)
    assert bookkeeping.busy and bookkeeping.free() == (1, 4000)
    left = bookkeeping.offer(*bookkeeping.free()).as_dict()
    assert left["NumberOfProcessors"] == 1 and left["MaxRAM"] == 4000
    assert not {"MultiProcessor", "WholeNode"} & set(left["Tag"])
    bookkeeping.release("1")
    assert not bookkeeping.busy and bookkeeping.free() == (4, 16000)


def test_time_left_runs_down_from_the_slots_wall_clock() -> None:
    bookkeeping = Slot(slot(), started=time.monotonic() - 100)
    assert 86400 - 101 < bookkeeping.time_left() <= 86400 - 100
    offered = bookkeeping.offer(1, None)
    assert 86400 - 102 < offered.wall_clock_time_left <= 86400 - 100
    assert offered.cpu_time < slot().cpu_time  # CPUTime shrinks with the time left


def intervals(stub: Stub, jobs: list[int], tmp: Path) -> list[tuple[float, float, int]]:
    """(start, end, cores) of each job, from the timestamps its payload printed."""
    found = []
    for job in jobs:
        assert stub.status(job) == "Done", stub.client.job(job)
        stub.client.get_output(job, tmp / str(job))
        text = (tmp / str(job) / "out").read_text()
        match = re.fullmatch(r"start=([\d.]+) end=([\d.]+) cores=(\d+)\n", text)
        assert match, text
        found.append((float(match[1]), float(match[2]), int(match[3])))
    return found


def busy_cores(spans: list[tuple[float, float, int]], at: float) -> int:
    return sum(cores for start, end, cores in spans if start <= at < end)


def test_four_cores_run_four_jobs_at_once_and_a_two_core_job_takes_two(
    stub: Stub, tmp_path: Path
) -> None:
    mark = new_mark("slots")
    two = stub.submit(payload_jdl("stamps.py", mark, 2.5, extra="NumberOfProcessors = 2;"))
    ones = [stub.submit(payload_jdl("stamps.py", mark, 2.5))[0] for _ in range(6)]
    done = run_pilot(["run", "--server", stub.url, "--cores", "4", *FAST], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    spans = intervals(stub, two + ones, tmp_path)
    assert spans[0][2] == 2 and {s[2] for s in spans[1:]} == {1}  # NUMBER_OF_PROCESSORS
    starts = [s[0] for s in spans]
    assert max(busy_cores(spans, t) for t in starts) == 4  # the slot was full, never over
    one_core = spans[1:]
    most = max(sum(1 for s, e, _ in one_core if s <= t < e) for t in starts)
    assert most == 4  # four 1-core jobs overlapped
    during_two = [s for s in one_core if s[0] < spans[0][1] and spans[0][0] < s[1]]
    assert len(during_two) == 2  # beside the 2-core job, only two more fitted


def test_max_concurrent_caps_the_jobs_at_once(stub: Stub, tmp_path: Path) -> None:
    mark = new_mark("slots")
    jobs = [stub.submit(payload_jdl("stamps.py", mark, 1.0))[0] for _ in range(4)]
    args = ["run", "--server", stub.url, "--cores", "4", "--max-concurrent", "2", *FAST]
    done = run_pilot(args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    spans = intervals(stub, jobs, tmp_path)
    assert max(busy_cores(spans, s[0]) for s in spans) == 2
    timing = stub.client.job(jobs[-1])["timing"]
    assert set(timing) >= {"match", "stage_in", "payload", "stage_out"}
    assert timing["payload"] >= 1.0 and timing["match"] < 30


def test_the_slot_runs_down_from_when_its_time_was_read(tmp_path: Path) -> None:
    """Time spent registering (a server retrying for a minute, say) is time the slot no
    longer has: the first offer must not count it as still left."""
    from typing import Any

    from pilot import agent
    from pilot.backends.local import LocalBackend
    from pilot.config import PilotConfig

    class SlowRegistration(LocalBackend):
        offered: list[int] = []

        def register(self, stamp: str, info: Any) -> None:
            time.sleep(2.0)
            super().register(stamp, info)

        def match(self, resources: Any) -> Any:
            self.offered.append(resources["WallClockTimeLeft"])
            return super().match(resources)

    (tmp_path / "job.jdl").write_text('Executable = "/bin/true";')
    backend = SlowRegistration.from_file(tmp_path / "job.jdl", tmp_path / "out")
    config = PilotConfig(work_dir=tmp_path / "work", idle_timeout=0.0)
    agent.run(config, backend, agent.Stop(), finish_later=False)
    assert backend.offered and backend.offered[0] <= resources.UNLIMITED_WALL_S - 2
