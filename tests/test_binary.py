"""The one-file binary ``dist/pilot``: build facts, size, glibc floor (2.28, EL8), and a
real run in a Debian bullseye root filesystem (glibc 2.31) against a stub on the host's
loopback.

The session fixture :func:`pilot_binary` runs ``build/build.py`` (what ``make binary``
runs), which rebuilds only when the sources changed. The first build on a machine also
makes the bullseye trees under ``build/cache/`` (debootstrap, a CPython compile): several
minutes, once. Needs root, debootstrap and bubblewrap; with ``CI=true`` a missing
requirement fails the tests, elsewhere it skips them, naming what is missing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pytest

from testbed import pki as P
from tests.conftest import REPO, Stub, unavailable
from tests.pluginpath import plugin_dir

sys.path.insert(0, str(REPO / "build"))
import elfcheck

pytestmark = [pytest.mark.slow, pytest.mark.system, pytest.mark.timeout(1800)]

BUILD = REPO / "build" / "build.py"
ROOTFS = REPO / "build" / "rootfs.py"
DIST = REPO / "dist" / "pilot"
PLUGIN_BINARY = REPO / "build" / "work" / "plugin-test" / "pilot"
SAMPLE_PLUGIN = REPO / "tests" / "plugins" / "sample_vo_plugin"
FLOOR = (2, 28)  # EL8's glibc (build/rootfs.py, FLOOR_HEADER)
MAX_BYTES = 25 * 1024 * 1024
BUILD_TIMEOUT = 1700
CHECK_FAST = ["--disable-check", "cpu", "--check-timeout", "10"]  # `check` runs no loop
FAST = ["--idle-timeout", "1", *CHECK_FAST]


def _require_build_tools() -> None:
    if os.geteuid() != 0:
        unavailable("needs root: the binary is built in a debootstrap'ed bullseye tree")
    for tool in ("debootstrap", "bwrap"):
        if shutil.which(tool) is None:
            unavailable(f"needs {tool}: install it (scripts/system-deps.sh)")


def build_binary(*extra: str) -> None:
    done = subprocess.run(
        [sys.executable, str(BUILD), *extra], capture_output=True, text=True, timeout=BUILD_TIMEOUT
    )
    if done.returncode != 0:
        pytest.fail(f"build/build.py {' '.join(extra)} failed:\n{done.stderr[-5000:]}")


def ensure_binary() -> Path:
    """``dist/pilot``, built now unless up to date (the build script decides).

    ``PILOT_TEST_BINARY=FILE`` tests that binary instead, without building.
    """
    given = os.environ.get("PILOT_TEST_BINARY")
    if given:
        return Path(given).resolve()
    _require_build_tools()
    build_binary()
    return DIST


@pytest.fixture(scope="session")
def pilot_binary() -> Path:
    return ensure_binary()


def test_build_from_an_empty_work_folder(tmp_path: Path) -> None:
    """What a fresh machine does: no build folder and no output folder (the bullseye tree
    and its installed packages are reused: reinstalling them took 3 of the suite's 12
    minutes; the install into a folder that does not exist yet is
    test_build_script.py::test_an_install_into_a_work_folder_that_does_not_exist_yet).
    Nothing may assume a folder of an earlier run."""
    _require_build_tools()
    work, output = tmp_path / "new" / "work", tmp_path / "out" / "pilot"
    build_binary("--work-dir", str(work), "--output", str(output), "--force")
    assert (work / "dist" / "pilot").is_file()
    done = subprocess.run([str(output), "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "usage:" in done.stdout, done.stderr


@pytest.fixture(scope="session")
def minbase() -> Path:
    """The pristine bullseye minbase tree (debootstrap, cached under build/cache)."""
    _require_build_tools()
    done = subprocess.run(
        [sys.executable, str(ROOTFS), "minbase"], capture_output=True, text=True, timeout=900
    )
    if done.returncode != 0:
        pytest.fail(f"debootstrap of bullseye failed:\n{done.stderr[-3000:]}")
    return Path(done.stdout.strip())


def in_bullseye(
    root: Path,
    binary: Path,
    args: Sequence[str],
    work: Path,
    timeout: float = 120,
    env: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """Run ``binary args`` in the read-only bullseye tree, cwd /srv/work (``work``, writable).

    The binary is /opt/pilot. bubblewrap keeps the host's network namespace, so
    127.0.0.1 is the host's loopback, where the stub listens.
    """
    argv = [
        "bwrap", "--ro-bind", str(root), "/", "--proc", "/proc", "--dev", "/dev",
        "--perms", "1777", "--tmpfs", "/tmp", "--tmpfs", "/opt", "--tmpfs", "/srv",
        "--ro-bind", str(binary), "/opt/pilot", "--bind", str(work), "/srv/work",
        "--chdir", "/srv/work", "--die-with-parent",
        "env", "-i", "PATH=/usr/bin:/bin", "HOME=/srv/work", "LANG=C.UTF-8", *env,
        "/opt/pilot", *args,
    ]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


def bundled_files(binary: Path, dest: Path) -> dict[str, Path]:
    """Extract every entry of the binary's PyInstaller archive into ``dest``, by name."""
    try:
        from PyInstaller.archive import readers
    except ImportError:
        unavailable("needs pyinstaller in the dev environment (make venv installs it)")
    archive = readers.CArchiveReader(str(binary))
    out = {}
    for index, name in enumerate(archive.toc):
        data = archive.extract(name)
        if data is None:
            continue
        path = dest / f"{index:04d}-{Path(name).name}"
        path.write_bytes(data)
        out[name] = path
    return out


# -- the binary itself -------------------------------------------------------------------


def test_version_prints_build_facts(pilot_binary: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        [str(pilot_binary), "--version"], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())  # argparse may re-wrap the lines
    assert re.search(r"pilot-agent \d+\.\d+\.\d+ \(python 3\.11\.\d+, one-file binary\)", text)
    assert re.search(r"built \d{4}-\d\d-\d\dT\S+ on Debian 11 \(bullseye\)", text), text
    assert re.search(r"needs glibc >= 2\.\d+;", text), text
    assert re.search(r"commit ([0-9a-f]{12}(-dirty)?|unknown);", text), text


def test_size_is_at_most_25_mb(pilot_binary: Path) -> None:
    assert 5 * 1024 * 1024 < pilot_binary.stat().st_size <= MAX_BYTES


def test_no_glibc_symbol_newer_than_bullseye(pilot_binary: Path, tmp_path: Path) -> None:
    files = bundled_files(pilot_binary, tmp_path)
    libpython = next(path for name, path in files.items() if name.startswith("libpython3.11.so"))
    floor, per_file = elfcheck.floor_of_files([pilot_binary, *files.values()])
    newer = {name: v for name, v in per_file.items() if v > FLOOR}
    assert floor is not None and not newer, f"need glibc newer than 2.28: {newer}"
    assert str(pilot_binary) in per_file  # the bootloader itself was checked too
    facts = json.loads(files["pilot/_build_info.json"].read_text())
    assert facts["glibc_floor"] == elfcheck.format_version(floor)
    if shutil.which("objdump"):  # cross-check the ELF reader against binutils
        dump = subprocess.run(
            ["objdump", "-T", str(libpython)], capture_output=True, text=True, timeout=60
        ).stdout
        seen = {tuple(map(int, v.split("."))) for v in re.findall(r"GLIBC_(\d+\.\d+)", dump)}
        assert max(seen) == per_file[str(libpython)]


def test_unpacks_under_tmpdir_when_tmp_is_noexec(pilot_binary: Path) -> None:
    if shutil.which("unshare") is None:
        unavailable("needs unshare (util-linux) to mount a noexec /tmp")
    # Everything here lives outside /tmp (the checkout itself may be under /tmp, which
    # the noexec mount below would hide): a copy of the binary and an exec-able TMPDIR.
    outside = Path.home() / ".cache" / "pilot-agent"
    outside.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=outside, prefix="noexec-test-") as scratch_name:
        scratch = Path(scratch_name)
        binary = scratch / "pilot"
        shutil.copy2(pilot_binary, binary)
        script = 'mount -t tmpfs -o noexec,nosuid tmpfs /tmp && exec "$0" --version'
        argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(binary)]
        env = {k: v for k, v in os.environ.items() if k not in {"TMPDIR", "TEMP", "TMP"}}
        blocked = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)
        assert blocked.returncode != 0
        # It started and unpacked, then could not map what it unpacked into /tmp:
        assert "error while loading shared libraries" in blocked.stderr, blocked.stderr
        exec_dir = scratch / "exec-tmp"
        exec_dir.mkdir()
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=60, env={**env, "TMPDIR": str(exec_dir)}
        )
        assert done.returncode == 0, done.stderr
        assert "one-file binary" in done.stdout
        assert os.listdir(exec_dir) == []  # the unpack directory was cleaned up at exit


# -- in the bullseye root filesystem -----------------------------------------------------


def test_check_json_in_bullseye(pilot_binary: Path, minbase: Path, tmp_path: Path) -> None:
    assert not (minbase / "usr/bin/python3").exists()  # no Python of ours on that node
    done = in_bullseye(minbase, pilot_binary, ["check", "--json", *CHECK_FAST], tmp_path)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["fit"] is True
    results = {r["name"]: r for r in report["checks"]["results"]}
    assert "glibc-2.31" in results["software"]["message"], results["software"]
    assert results["disk"]["status"] == "PASSED"
    assert "sample-vo" not in results  # test plugins of the dev environment are not bundled
    assert report["batch"]["system"] == "local"


def test_proxy_read_in_bullseye(pilot_binary: Path, minbase: Path, tmp_path: Path) -> None:
    """cryptography's native library, unpacked only when first imported, works there."""
    user = P.issue_user(P.make_ca(), cn="binary proxy user")
    P.write_private(tmp_path / "x509up", P.proxy_pem(P.issue_proxy(user), [user.cert]))
    env = ["X509_USER_PROXY=/srv/work/x509up"]
    done = in_bullseye(minbase, pilot_binary, ["check", "--json", *CHECK_FAST], tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    results = {r["name"]: r for r in json.loads(done.stdout)["checks"]["results"]}
    credentials = results["credentials"]
    assert credentials["status"] == "PASSED", credentials
    assert "CN=binary proxy user" in credentials["message"], credentials


def test_full_job_in_bullseye(
    pilot_binary: Path, minbase: Path, stub: Stub, tmp_path: Path
) -> None:
    (job,) = stub.submit(
        'Executable = "run.sh"; Arguments = "hello"; InputSandbox = {"run.sh"};'
        ' StdOutput = "StdOut"; StdError = "StdErr"; OutputSandbox = {"StdOut", "StdErr"};',
        files={"run.sh": '#!/bin/sh\necho "$1 from $(cat /etc/debian_version) job $JOBID"\n'},
    )
    args = ["run", "--server", stub.url, "--site", "Bullseye.Test.org", "--work-dir", "/srv/work/w"]
    done = in_bullseye(minbase, pilot_binary, [*args, *FAST], tmp_path)
    assert done.returncode == 0, done.stderr
    info = stub.client.job(job)
    assert (info["status"], info["minor_status"]) == ("Done", "Execution Complete"), info
    stub.client.get_output(job, tmp_path / "out")
    assert (tmp_path / "out" / "StdOut").read_text().startswith("hello from 11.")
    assert (tmp_path / "out" / "StdOut").read_text().strip().endswith(f"job {job}")


# -- plugins bundled at build time -------------------------------------------------------


def test_plugin_bundled_at_build_time_is_discovered(pilot_binary: Path, tmp_path: Path) -> None:
    build_binary("--plugin", str(SAMPLE_PLUGIN), "--output", str(PLUGIN_BINARY))
    done = subprocess.run(
        [str(PLUGIN_BINARY), "check", "--json", *CHECK_FAST],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    results = {r["name"]: r for r in json.loads(done.stdout)["checks"]["results"]}
    assert results["sample-vo"]["status"] == "PASSED"
    assert results["sample-vo"]["source"] == "entry-point:pilot-sample-vo-plugin"
    version = subprocess.run(
        [str(PLUGIN_BINARY), "--version"], capture_output=True, text=True, timeout=60
    ).stdout
    assert "plugins: pilot-sample-vo-plugin" in " ".join(version.split())


def test_plugin_installed_beside_the_binary_is_found_through_plugin_path(
    pilot_binary: Path, tmp_path: Path
) -> None:
    site = plugin_dir(tmp_path)  # as `pip install --target` leaves a pure-Python plugin
    done = subprocess.run(
        [str(pilot_binary), "check", "--json", "--plugin-path", str(site), *CHECK_FAST],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    results = {r["name"]: r for r in json.loads(done.stdout)["checks"]["results"]}
    assert results["site-vo"]["status"] == "PASSED", results.get("site-vo")
    assert results["site-vo"]["source"] == "entry-point:site-vo-check"
