"""pilot.node.entrypoints: the same entry points as importlib.metadata, for less."""

from __future__ import annotations

import importlib.metadata
import json
import sys
from pathlib import Path

import pytest

from pilot.node import entrypoints


@pytest.mark.parametrize("group", ["pilot.checks", "console_scripts", "pytest11"])
def test_same_entry_points_as_importlib_metadata(group: str) -> None:
    ours = {(ep.name, ep.value, ep.distribution) for ep in entrypoints.entry_points(group)}
    theirs = {
        (ep.name, ep.value, ep.dist.name if ep.dist else None)
        for ep in importlib.metadata.entry_points(group=group)
    }
    assert ours == theirs and ours  # every group named here has entry points in the venv


def _dist(site: Path, folder: str, name: str, entry_points: str) -> None:
    info = site / folder
    info.mkdir(parents=True)
    headers = f"Metadata-Version: 2.1\nName: {name}\nVersion: 1\n"
    (info / "METADATA").write_text(headers + "\nName: not a header, the body\n")
    (info / "entry_points.txt").write_text(entry_points)


def test_first_distribution_on_the_path_wins_and_sections_are_kept_apart(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    _dist(first, "Vo_Checks-2.0.dist-info", "vo-checks", "[pilot.checks]\na = m:A\n")
    _dist(second, "vo_checks-1.0.dist-info", "vo-checks", "[pilot.checks]\nold = m:Old\n")
    _dist(
        second,
        "other-1.egg-info",
        "other",
        "# comment\n[console_scripts]\nx = m:x\n\n[pilot.checks]\n; note\n"
        "[ spaced ]\nc = m:c\n[pilot.checks]\nb = pkg.mod:Obj.attr [extra]\n",
    )
    path = [str(first), str(second), str(tmp_path / "no")]
    found = entrypoints.entry_points("pilot.checks", path)
    assert [(ep.name, ep.value, ep.distribution) for ep in found] == [
        ("a", "m:A", "vo-checks"),
        ("b", "pkg.mod:Obj.attr [extra]", "other"),
    ]


def test_load_follows_attributes_and_refuses_malformed_values(tmp_path: Path) -> None:
    ep = entrypoints.EntryPoint("dumps", "json:dumps", "g")
    assert ep.load() is json.dumps
    assert entrypoints.EntryPoint("m", "json", "g").load() is json
    nested = entrypoints.EntryPoint("n", "importlib.metadata:EntryPoint.load [x]", "g")
    assert nested.load() is importlib.metadata.EntryPoint.load
    with pytest.raises(ValueError, match="malformed entry point"):
        entrypoints.EntryPoint("bad", "not a value!", "g").load()
    with pytest.raises(ModuleNotFoundError):
        entrypoints.EntryPoint("gone", "no_such_module_xyz:x", "g").load()


def test_unreadable_metadata_is_skipped(tmp_path: Path) -> None:
    info = tmp_path / "broken-1.dist-info"
    info.mkdir()
    (info / "entry_points.txt").write_bytes(b"\xff\xfe[pilot.checks]\n")
    (tmp_path / "file-1.dist-info").write_text("not a directory")
    assert entrypoints.entry_points("pilot.checks", [str(tmp_path), sys.executable]) == ()
