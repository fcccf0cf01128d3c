"""DIRAC matching semantics, case by case, through the stub's real store and HTTP route."""

from __future__ import annotations

from pathlib import Path

import pytest

from pilot.job import jdl
from server_stub.store import Store

BASE = {
    "Site": "LCG.CERN.cern",
    "GridCE": "ce1.cern.ch",
    "Platform": "Linux_x86_64_glibc-2.36",
    "CPUTime": 100000,
    "NumberOfProcessors": 4,
    "MaxRAM": 8000,
    "Tag": ["MultiProcessor", "cvmfs:atlas.cern.ch"],
}

CASES = [
    # (job attributes beyond Executable, resource overrides, matches?, reason fragment)
    ('Site = "LCG.CERN.cern";', {}, True, ""),
    ('Site = {"LCG.RAL.uk", "LCG.IN2P3.fr"};', {}, False, "not in job's sites"),
    ('Site = "ANY";', {}, True, ""),
    ('BannedSites = {"LCG.CERN.cern"};', {}, False, "site LCG.CERN.cern banned"),
    ('BannedSites = {"LCG.RAL.uk"};', {}, True, ""),
    ('Platform = "Linux_x86_64_glibc-2.17";', {}, False, "platform"),
    ('Platform = {"Linux_x86_64_glibc-2.36", "x"};', {}, True, ""),
    ('GridCE = "ce9.cern.ch";', {}, False, "CE ce1.cern.ch"),
    ("CPUTime = 200000;", {}, False, "CPUTime 200000 > 100000 left"),
    ("CPUTime = 90000;", {}, True, ""),
    ('Tags = {"GPU"};', {}, False, "needs tag GPU"),
    ('Tags = {"cvmfs:atlas.cern.ch"};', {}, True, ""),
    (
        'Tags = {"cvmfs:atlas.cern.ch"};',
        {"RequiredTag": ["special"]},
        False,
        "pilot requires tag special",
    ),
    ('Tags = {"special"};', {"RequiredTag": ["special"], "Tag": ["special"]}, True, ""),
    ("NumberOfProcessors = 4;", {}, True, ""),
    ("NumberOfProcessors = 8;", {}, False, "needs 8 processors, 4 available"),
    ("NumberOfProcessors = 2;", {"NumberOfProcessors": 1}, False, "needs 2 processors"),
    ("MaxRAM = 16000;", {}, False, "MaxRAM 16000 MB > 8000 MB"),
    ("MaxRAM = 4000;", {}, True, ""),
    ("WholeNode = True;", {}, False, "needs tag WholeNode"),
    ("NumberOfGPUs = 1;", {"Tag": ["GPU"]}, True, ""),
]


def _store(tmp_path: Path) -> Store:
    return Store(tmp_path / "m.db")


def _submit(store: Store, extra: str) -> int:
    return store.submit(jdl.parse(f'Executable = "/bin/true"; {extra}'), "tester")


@pytest.mark.parametrize(("extra", "override", "matches", "reason"), CASES)
def test_case(tmp_path: Path, extra: str, override: dict, matches: bool, reason: str) -> None:
    store = _store(tmp_path)
    job_id = _submit(store, extra)
    resources = {**BASE, **override}
    claim = store.match(resources, "p1", dry_run=False)
    if matches:
        assert claim is not None and claim.job_id == job_id
        assert store.job(job_id)["status"] == "Matched"
    else:
        assert claim is None
        misses = store.near_misses(resources)
        assert misses and misses[0]["job_id"] == job_id
        assert any(reason in r for r in misses[0]["reasons"]), misses
        assert store.job(job_id)["status"] == "Waiting"


def test_priority_then_age(tmp_path: Path) -> None:
    store = _store(tmp_path)
    low = _submit(store, "Priority = 1;")
    high_old = _submit(store, "Priority = 5;")
    high_new = _submit(store, "Priority = 5;")
    order = [store.match(BASE, "p", False) for _ in range(3)]
    assert [c.job_id for c in order if c] == [high_old, high_new, low]
    assert store.match(BASE, "p", False) is None


def test_dry_run_claims_nothing(tmp_path: Path) -> None:
    store = _store(tmp_path)
    job_id = _submit(store, "")
    for _ in range(3):
        claim = store.match(BASE, "p", dry_run=True)
        assert claim is not None and claim.job_id == job_id and claim.token == ""
    assert store.job(job_id)["status"] == "Waiting"
    assert store.match(BASE, "p", dry_run=False) is not None
    assert store.job(job_id)["status"] == "Matched"


def test_dry_run_over_http_gives_reasons(stub) -> None:  # type: ignore[no-untyped-def]
    stub.submit('Executable = "/bin/true"; Tags = {"GPU"}; CPUTime = 86400;')
    answer = stub.client.json(
        "POST", "/api/jobs/match", json={"resources": {**BASE, "CPUTime": 3600}, "dry_run": True}
    )
    assert answer["match"] is None
    reasons = answer["near_misses"][0]["reasons"]
    assert "needs tag GPU" in reasons
    assert "CPUTime 86400 > 3600 left" in reasons


def test_match_over_http_returns_token_and_204(stub) -> None:  # type: ignore[no-untyped-def]
    (job_id,) = stub.submit('Executable = "/bin/true";')
    first = stub.client.call("POST", "/api/jobs/match", json={"pilot": "p", "resources": BASE})
    assert first.status_code == 200 and first.json()["job_id"] == job_id and first.json()["token"]
    again = stub.client.call("POST", "/api/jobs/match", json={"pilot": "p", "resources": BASE})
    assert again.status_code == 204
