"""build/build.py without building: a malformed or unreadable lock stops it before it
downloads or removes anything, and a full disk while writing the binary leaves the old
one and no half-written copy."""

from __future__ import annotations

import errno
import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.conftest import REPO


@pytest.fixture
def build(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(REPO / "build"))  # build.py imports rootfs beside it
    spec = importlib.util.spec_from_file_location("build_script", REPO / "build" / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def nothing_may_run(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"ran {args}")

    monkeypatch.setattr(module, "run", nothing_may_run)
    monkeypatch.setattr(module, "download_wheels", nothing_may_run)
    return module


LOCK_WITHOUT_PIP = "httpx==0.28.1 \\\n    --hash=sha256:00\npyinstaller==6.22.3 \\\n"


def test_a_lock_that_pins_no_pip_stops_before_any_download(
    build: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    lock = tmp_path / "binary.lock"
    lock.write_text(LOCK_WITHOUT_PIP)
    monkeypatch.setattr(build, "BINARY_LOCK", lock)
    with pytest.raises(SystemExit, match="pins no pip: run make lock"):
        build.ensure_build_python(tmp_path / "root", tmp_path / "work")
    assert not (tmp_path / "work").exists()


@pytest.mark.parametrize("bad", ["directory", "missing", "binary"])
def test_an_unreadable_lock_is_one_line_not_a_traceback(
    build: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, bad: str
) -> None:
    lock = tmp_path / "binary.lock"
    if bad == "directory":
        lock.mkdir()
    elif bad == "binary":
        lock.write_bytes(b"\xff\xfe\x00garbage")
    monkeypatch.setattr(build, "BINARY_LOCK", lock)
    with pytest.raises(SystemExit, match=f"cannot read {lock}"):
        build.ensure_build_python(tmp_path / "root", tmp_path / "work")


def test_a_staticx_lock_without_staticx_keeps_the_existing_venv(
    build: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    lock = tmp_path / "staticx.lock"
    lock.write_text(LOCK_WITHOUT_PIP)
    monkeypatch.setattr(build, "STATICX_LOCK", lock)
    monkeypatch.setattr(build.rootfs, "CACHE", tmp_path / "cache")
    venv = tmp_path / "cache" / "staticx-venv"
    venv.mkdir(parents=True)
    with pytest.raises(SystemExit, match="pins no staticx"):
        build.ensure_staticx_venv(tmp_path / "work")
    assert venv.is_dir()


def test_a_full_disk_keeps_the_old_binary_and_no_partial_copy(
    build: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    made = tmp_path / "work" / "dist" / "pilot"
    made.parent.mkdir(parents=True)
    made.write_bytes(b"new binary")
    output = tmp_path / "dist" / "pilot"
    output.parent.mkdir()
    output.write_bytes(b"old binary")

    def full_disk_copy(src: Path, dst: Path) -> None:
        Path(dst).write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setitem(build.METHODS, "host", lambda work, plugins, facts: made)
    monkeypatch.setattr(build, "base_facts", lambda method, stamp: {})
    monkeypatch.setattr(build.shutil, "copy2", full_disk_copy)
    with pytest.raises(OSError, match="No space left"):
        build.build("host", [], output, force=True, work=tmp_path / "work")
    assert output.read_bytes() == b"old binary"
    assert sorted(p.name for p in output.parent.iterdir()) == ["pilot"]


def test_the_real_locks_pin_what_the_builds_need(build: ModuleType) -> None:
    assert set(build.read_lock(build.BINARY_LOCK, "pip", "pyinstaller")[1]) == {
        "pip",
        "pyinstaller",
    }
    build.read_lock(build.STATICX_LOCK, "pyinstaller", "staticx")


def test_an_interrupted_reinstall_does_not_pass_for_done(
    build: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """--reinstall (or any install) killed half-way: the next build installs again."""
    root = tmp_path / "root"
    stamp = root / build.rootfs.PYTHON_PREFIX.lstrip("/") / "pilot-build-pins.txt"
    stamp.parent.mkdir(parents=True)
    stamp.write_text(build.BINARY_LOCK.read_text())
    monkeypatch.setattr(build, "REINSTALL", True)

    def killed(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt  # as good as -9 for what is on disk afterwards

    monkeypatch.setattr(build, "download_wheels", killed)
    with pytest.raises(KeyboardInterrupt):
        build.ensure_build_python(root, tmp_path / "work")
    assert not stamp.exists()


def test_an_install_into_a_work_folder_that_does_not_exist_yet(
    build: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A fresh machine: no work folder, no stamp. The locked requirements were written into
    a folder nothing had made (FileNotFoundError); now the folder is made, the lock is the
    requirements file, the wheels are fetched into it and the install runs, then stamps."""
    root, work = tmp_path / "root", tmp_path / "new" / "work"
    calls: list[str] = []
    monkeypatch.setattr(
        build, "download_wheels", lambda req, dest: calls.append(f"download {req} {dest}")
    )
    monkeypatch.setattr(build, "run", lambda argv, **kw: calls.append("install"))
    (root / build.rootfs.PYTHON_PREFIX.lstrip("/")).mkdir(parents=True)
    build.ensure_build_python(root, work)
    lock = build.BINARY_LOCK.read_text()
    assert (work / "requirements.txt").read_text() == lock
    assert calls == [f"download {work / 'requirements.txt'} {work / 'wheels'}", "install"]
    stamp = root / build.rootfs.PYTHON_PREFIX.lstrip("/") / "pilot-build-pins.txt"
    assert stamp.read_text() == lock
    calls.clear()
    build.ensure_build_python(root, tmp_path / "other")  # stamped: nothing to do
    assert calls == []
