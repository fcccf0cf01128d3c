"""A job is parsed once per job, and its inputs are sorted by kind in one place."""

from __future__ import annotations

from pathlib import Path

import pytest

from pilot import agent
from pilot.backends.base import InputKind, Inputs, classify
from pilot.backends.local import LocalBackend
from pilot.config import PilotConfig
from pilot.job import jdl


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


def test_each_job_is_parsed_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "in.txt").write_text("data\n")
    (tmp_path / "job.jdl").write_text(
        'Executable = "/bin/cat"; Arguments = "in.txt"; InputSandbox = {"in.txt"};'
        ' StdOutput = "out"; OutputSandbox = {"out"}; Parameters = 3;'
        ' ParameterStart = 1; ParameterStep = 1;'
    )
    backend = LocalBackend.from_file(tmp_path / "job.jdl", tmp_path / "out")
    jobs = list(backend.jobs)
    assert len(jobs) == 3
    parses: list[str] = []
    loads: list[str] = []
    real_parse, real_load = jdl.parse, jdl.load

    def counting_parse(text: str | bytes) -> dict[str, jdl.Value]:
        parses.append(text if isinstance(text, str) else text.decode())
        return real_parse(text)

    def counting_load(text: str | bytes) -> jdl.JobDescription:
        loads.append(text if isinstance(text, str) else text.decode())
        return real_load(text)

    monkeypatch.setattr(jdl, "parse", counting_parse)
    monkeypatch.setattr(jdl, "load", counting_load)
    config = PilotConfig(work_dir=tmp_path / "work", idle_timeout=0.0, max_concurrent=1)
    summary = agent.run(config, backend, agent.Stop(), finish_later=False)
    assert [o.status.value for o in summary.outcomes] == ["Done"] * 3
    # one parse per job, by the agent right after the match; runner and backend share it
    assert len(loads) == 3 and len(parses) == 3
    assert sorted(loads) == sorted(j.jdl for j in jobs)
    for n in (1, 2, 3):
        assert (tmp_path / "out" / f"local-{n}" / "out").read_text() == "data\n"
