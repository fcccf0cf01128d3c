"""One name per quantity, checked by parsing the code: a minor status the pilot or the
stub writes is a ``Minor`` member, never a literal spelled again; the per-stream output
cap is ``max_stdout_mb`` in settings and ``max_stdout_bytes`` below them, under no other
name."""

from __future__ import annotations

import ast
from pathlib import Path

from pilot.backends.base import Minor

REPO = Path(__file__).resolve().parent.parent
ENUM_HOME = REPO / "pilot" / "backends" / "base.py"
OLD_CAP_NAMES = {"cap", "cap_mb", "cap_bytes", "max_stream_bytes"}


def _trees(*tops: str) -> list[tuple[Path, ast.Module]]:
    return [
        (path, ast.parse(path.read_text(), str(path)))
        for top in tops
        for path in sorted((REPO / top).rglob("*.py"))
    ]


def minor_literals(tree: ast.Module) -> list[tuple[int, str]]:
    values = {m.value for m in Minor}
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in values
    ]


def test_minor_statuses_are_written_through_the_enum() -> None:
    bad = [
        f"{path.relative_to(REPO)}:{line} {value!r}"
        for path, tree in _trees("pilot", "server_stub", "checks")
        if path != ENUM_HOME
        for line, value in minor_literals(tree)
    ]
    assert bad == []


def test_the_minor_literal_check_sees_a_literal() -> None:
    tree = ast.parse('record(job, WAITING, "Job Rescheduled")\nrecord(job, Minor.RESCHEDULED)')
    assert minor_literals(tree) == [(1, "Job Rescheduled")]


def test_the_output_cap_has_one_name() -> None:
    bad = []
    for path, tree in _trees("pilot"):
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.arg):
                names.append(node.arg)
            elif isinstance(node, ast.Attribute):
                names.append(node.attr)
            elif isinstance(node, ast.Name):
                names.append(node.id)
            bad += [
                f"{path.relative_to(REPO)}:{node.lineno} {n}" for n in names if n in OLD_CAP_NAMES
            ]
    assert bad == []
