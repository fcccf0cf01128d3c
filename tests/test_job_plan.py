"""A job is parsed once per job, and its inputs are sorted by kind in one place."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from traceback import extract_stack

import pytest

from pilot import agent
from pilot.backends.base import InputKind, Inputs, MatchedJob, as_lfn, classify, lfn_path
from pilot.backends.dirac import data as dirac_data
from pilot.backends.local import LocalBackend
from pilot.backends.stub import HttpClient, StubBackend
from pilot.config import PilotConfig
from pilot.job import jdl
from server_stub import cli as stub_cli
from tests.conftest import REPO, Stub


@pytest.mark.parametrize(
    ("entry", "kind"),
    [
        ("SB:0123abcd", InputKind.SANDBOX),
        ("SB:SandboxSE|/SandBox/a.tar.bz2", InputKind.SANDBOX),
        ("LFN:/vo/data/f.root", InputKind.LFN),
        ("lfn:/vo/data/f.root", InputKind.LFN),
        ("Lfn:/vo/data/f.root", InputKind.LFN),
        ("https://host/x.tar", InputKind.URL),
        ("http://127.0.0.1:8/x", InputKind.URL),
        ("input.txt", InputKind.LOCAL),
        ("/abs/input.txt", InputKind.LOCAL),
        ("ftp://host/x", InputKind.LOCAL),  # no scheme the pilot fetches: a file name
        ("sb:lowercase", InputKind.LOCAL),  # SB: is spelt in capitals only
    ],
)
def test_classify(entry: str, kind: InputKind) -> None:
    assert classify(entry) is kind


def test_inputs_keep_the_jobs_order_within_each_kind() -> None:
    entries = ("b.txt", "SB:1", "lfn:/x", "https://h/u", "a.txt", "SB:2", "LFN:/y")
    assert Inputs.of(entries) == Inputs(
        sandboxes=("SB:1", "SB:2"),
        lfns=("LFN:/x", "LFN:/y"),
        urls=("https://h/u",),
        local=("b.txt", "a.txt"),
    )
    desc = jdl.load('Executable = "x"; InputSandbox = {"a.txt", "SB:1"};')
    assert desc.inputs is desc.inputs  # classified once per description


@dataclass
class Parses:
    """Calls the pilot makes (not the stub serving it in this process): ``texts`` to
    ``jdl.parse`` (also through ``jdl.load``), ``built`` to ``JobDescription.from_attrs``."""

    texts: list[str] = field(default_factory=list)
    built: list[str] = field(default_factory=list)


def _by_the_pilot() -> bool:
    return not any(f"{os.sep}server_stub{os.sep}" in frame.filename for frame in extract_stack())


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> Parses:
    counted = Parses()
    real_parse, real_build = jdl.parse, jdl.JobDescription.from_attrs

    def parse(text: str | bytes) -> dict[str, jdl.Value]:
        if _by_the_pilot():
            counted.texts.append(text if isinstance(text, str) else text.decode())
        return real_parse(text)

    def from_attrs(attrs: Mapping[str, jdl.Value]) -> jdl.JobDescription:
        if _by_the_pilot():
            counted.built.append(jdl.dumps(attrs))
        return real_build(attrs)

    monkeypatch.setattr(jdl, "parse", parse)
    monkeypatch.setattr(jdl.JobDescription, "from_attrs", from_attrs)
    return counted


PARAMETRIC = (
    'Executable = "/bin/cat"; Arguments = "in.txt"; InputSandbox = {"in.txt"};'
    ' StdOutput = "out"; OutputSandbox = {"out"}; Parameters = 3;'
    " ParameterStart = 1; ParameterStep = 1;"
)


def test_each_local_job_is_parsed_once(tmp_path: Path, parses: Parses) -> None:
    """``pilot local``: the file is parsed once and each job's description built once,
    up front (a bad job is refused before any runs); the agent and runner reuse it."""
    (tmp_path / "in.txt").write_text("data\n")
    (tmp_path / "job.jdl").write_text(PARAMETRIC)
    backend = LocalBackend.from_file(tmp_path / "job.jdl", tmp_path / "out")
    jobs = list(backend.jobs)
    assert len(jobs) == 3
    config = PilotConfig(work_dir=tmp_path / "work", idle_timeout=0.0, max_concurrent=1)
    summary = agent.run(config, backend, agent.Stop(), finish_later=False)
    assert [o.status.value for o in summary.outcomes] == ["Done"] * 3
    assert parses.texts == [PARAMETRIC]  # the file, once, in from_file
    assert len(parses.built) == 3  # one description per job
    for n in (1, 2, 3):
        assert (tmp_path / "out" / f"local-{n}" / "out").read_text() == "data\n"


def test_each_stub_job_is_parsed_once(stub: Stub, tmp_path: Path, parses: Parses) -> None:
    """Against a real stub: one parse per matched job, by the agent right after the
    match; slot, runner, staging and the backend's fetch share it."""
    ids = stub.submit(PARAMETRIC, {"in.txt": "data\n"})
    parses.texts.clear()
    parses.built.clear()
    backend = StubBackend(HttpClient(stub.url))
    config = PilotConfig(work_dir=tmp_path / "work", idle_timeout=0.0, max_concurrent=1)
    try:
        summary = agent.run(config, backend, agent.Stop(), finish_later=False)
    finally:
        backend.close()
    assert [o.status.value for o in summary.outcomes] == ["Done"] * 3
    assert [stub.status(i) for i in ids] == ["Done"] * 3
    assert len(parses.texts) == 3 and len(parses.built) == 3
    assert sorted(parses.texts) == sorted(stub.client.get_jdl(i) for i in ids)


def test_a_bad_jdl_is_parsed_once_and_its_error_reported(tmp_path: Path, parses: Parses) -> None:
    """A job whose JDL does not parse: the agent's parse fails, the error is carried to
    the runner, which reports it without parsing again."""
    bad = MatchedJob("bad-1", 'Executable = "/bin/true"; Arguments = ;')
    backend = LocalBackend(tmp_path / "job.jdl", tmp_path / "out", [bad])
    config = PilotConfig(work_dir=tmp_path / "work", idle_timeout=0.0, max_concurrent=1)
    summary = agent.run(config, backend, agent.Stop(), finish_later=False)
    assert [o.status.value for o in summary.outcomes] == ["Failed"]
    (final,) = [r for r in backend.history["bad-1"] if r["Status"] == "Failed"]
    assert str(final["MinorStatus"]).startswith("Invalid JDL:")
    assert parses.texts == [bad.jdl]


@pytest.mark.parametrize(
    ("entry", "path"),
    [("LFN:/vo/a", "/vo/a"), ("lfn:/vo/a", "/vo/a"), ("/vo/a", "/vo/a"), ("Lfn:/x", "/x")],
)
def test_lfn_path_and_as_lfn(entry: str, path: str) -> None:
    assert lfn_path(entry) == path
    assert as_lfn(entry) == "LFN:" + path


def test_every_lfn_prefix_is_read_as_classify_reads_it() -> None:
    """The stub's CLI, the DIRAC data layer and the output stage take ``lfn:`` like
    ``LFN:`` (once they checked the prefix themselves, case-sensitively in places)."""
    assert stub_cli.lfn_of("lfn:/vo/x") == "LFN:/vo/x"
    assert dirac_data.check_lfn("Lfn:/vo/a/b") == "/vo/a/b"
    assert dirac_data.user_lfn("vo", "alice", "7", "lfn:/vo/abs", "f") == "/vo/abs/f"
    assert dirac_data.user_lfn("vo", "alice", "7", "rel", "f") == "/vo/user/a/alice/rel/f"


def test_no_module_reads_the_lfn_prefix_itself() -> None:
    """``classify``/``lfn_path`` in pilot/backends/base.py are the only readers of it."""
    pattern = re.compile(r"""(startswith|removeprefix)\(\s*["']LFN:|\[:4\]\.(upper|lower)\(\)""")
    bad = [
        f"{path.relative_to(REPO)}:{n}"
        for top in ("pilot", "server_stub", "checks")
        for path in sorted((REPO / top).rglob("*.py"))
        if path != REPO / "pilot" / "backends" / "base.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert bad == []
