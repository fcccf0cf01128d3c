"""scripts/lock.py (make lock): which uv commands it runs, without running them."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "lock.py"


def load_lock() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lock_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("args", "upgrade"), [([], False), (["--upgrade"], True)])
def test_lock_keeps_locked_versions_unless_asked_to_upgrade(
    monkeypatch: pytest.MonkeyPatch, args: list[str], upgrade: bool
) -> None:
    lock = load_lock()
    commands: list[list[str]] = []

    def fake_run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        commands.append(argv)
        return subprocess.CompletedProcess(argv, 0)

    monkeypatch.setattr(lock.shutil, "which", lambda *a, **k: "/fake/uv")
    monkeypatch.setattr(lock.subprocess, "run", fake_run)
    assert lock.main(args) == 0
    outputs = [argv[argv.index("-o") + 1] for argv in commands]
    assert outputs == [f"requirements/{name}" for name, _ in lock.LOCKS]
    assert all(argv[:3] == ["/fake/uv", "pip", "compile"] for argv in commands)
    assert all(("--upgrade" in argv) is upgrade for argv in commands)


def test_lock_stops_at_the_first_lock_that_does_not_resolve(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lock = load_lock()
    commands: list[list[str]] = []

    def failing_run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        commands.append(argv)
        return subprocess.CompletedProcess(argv, 1)

    monkeypatch.setattr(lock.shutil, "which", lambda *a, **k: "/fake/uv")
    monkeypatch.setattr(lock.subprocess, "run", failing_run)
    assert lock.main([]) == 1
    assert len(commands) == 1
