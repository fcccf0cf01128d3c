"""Debian bullseye root filesystems for building and testing the one-file pilot.

Two trees live under ``build/cache/`` (git-ignored), each made once and then reused:

- ``bullseye-minbase``: ``debootstrap --variant=minbase bullseye`` and nothing else. The
  portability test runs ``dist/pilot`` in it: no Python, glibc 2.31, the floor we promise.
- ``bullseye-build``: a copy of minbase plus a C tool chain and the -dev packages CPython
  needs, and CPython itself compiled from Debian's python3.11 source package into
  ``/opt/python3.11``. :mod:`build.py <build>` runs PyInstaller in it, so every library the
  binary carries was linked against glibc 2.31. CPython is built so that it needs no
  glibc symbol newer than 2.28 (EL8): without ``sem_clockwait`` (2.30) and bound to the
  older versions of the five libm functions that glibc 2.29 re-versioned (``FLOOR_HEADER``).

Each tree is made in a ``*.tmp`` directory and renamed into place only when complete,
under an exclusive lock, so an interrupted run or two concurrent test sessions never see
a half-made tree. Run as root (debootstrap, chroot).

    python build/rootfs.py minbase        # prints the path of the minbase tree
    python build/rootfs.py build-root     # prints the path of the build tree
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("PILOT_BUILD_CACHE", HERE / "cache"))
SUITE = "bullseye"
MIRROR = "http://deb.debian.org/debian"
PYTHON_PREFIX = "/opt/python3.11"
# Source of CPython for the build tree: Debian's own python3.11 source package (bookworm).
PYTHON_SOURCE_SUITE = "bookworm"
BUILD_PACKAGES = (
    "build-essential",
    "dpkg-dev",
    "ca-certificates",
    "xz-utils",
    "zlib1g-dev",
    "libssl-dev",
    "libffi-dev",
    "libbz2-dev",
    "liblzma-dev",
    "libsqlite3-dev",
    "uuid-dev",
    "libexpat1-dev",
    "pkg-config",
    "binutils",
)
# Forced into every C file of CPython (not into extensions built later): glibc 2.29 gave
# exp, exp2, log, log2 and pow new symbol versions (the same functions without the old
# SVID error-handling wrappers); binding to the original versions keeps libpython and the
# math modules loadable on glibc 2.28, with the same results and errno behaviour.
FLOOR_HEADER = """\
__asm__(".symver exp,exp@GLIBC_2.2.5");
__asm__(".symver exp2,exp2@GLIBC_2.2.5");
__asm__(".symver log,log@GLIBC_2.2.5");
__asm__(".symver log2,log2@GLIBC_2.2.5");
__asm__(".symver pow,pow@GLIBC_2.2.5");
"""
# Changes whenever the CPython build changes: a cached build tree with another is rebuilt.
PYTHON_BUILD = "3.11 bookworm source, glibc floor 2.28"
PYTHON_BUILD_STAMP = f"{PYTHON_PREFIX}/pilot-python-build.txt"
CHROOT_PATH = f"{PYTHON_PREFIX}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def log(message: str) -> None:
    print(f"rootfs: {message}", file=sys.stderr, flush=True)


def run(argv: Sequence[str], **kwargs: object) -> None:
    log("$ " + " ".join(argv))
    subprocess.run(list(argv), check=True, **kwargs)  # type: ignore[call-overload]


@contextlib.contextmanager
def locked(name: str) -> Iterator[None]:
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f"{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _fresh(path: Path) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    return tmp


def chroot_argv(
    root: Path, argv: Sequence[str], binds: Sequence[tuple[Path, str]] = ()
) -> list[str]:
    """``argv`` run as root inside ``root`` with /proc, /dev, DNS and ``binds`` mounted.

    bubblewrap sets the mounts up in a private mount namespace that dies with the command,
    so nothing stays mounted on the host whatever happens.
    """
    wrap = [
        "bwrap",
        "--bind", str(root), "/",
        "--proc", "/proc",
        "--dev", "/dev",
        "--perms", "1777", "--tmpfs", "/tmp",
        "--ro-bind", "/etc/resolv.conf", "/etc/resolv.conf",
        "--die-with-parent",
    ]  # fmt: skip
    for source, target in binds:
        wrap += ["--bind", str(source), target]
    env = ["env", "-i", f"PATH={CHROOT_PATH}", "HOME=/root", "LANG=C.UTF-8"]
    return [*wrap, *env, *argv]


def ensure_minbase() -> Path:
    """The pristine bullseye minbase tree, made with debootstrap on first use."""
    path = CACHE / f"{SUITE}-minbase"
    with locked(path.name):
        if (path / "etc/debian_version").is_file():
            return path
        tmp = _fresh(path)
        started = time.monotonic()
        run(
            ["debootstrap", "--variant=minbase", SUITE, str(tmp), MIRROR], stdout=subprocess.DEVNULL
        )
        (tmp / "var/cache/apt/archives").mkdir(parents=True, exist_ok=True)
        for deb in (tmp / "var/cache/apt/archives").glob("*.deb"):
            deb.unlink()
        tmp.rename(path)
        log(f"made {path} in {time.monotonic() - started:.0f} s")
        return path


def _apt_sources() -> str:
    return (
        f"deb {MIRROR} {SUITE} main\n"
        f"deb {MIRROR}-security {SUITE}-security main\n"
        f"deb-src {MIRROR} {PYTHON_SOURCE_SUITE} main\n"
    )


def _compile_python(tmp: Path) -> None:
    """Build CPython (shared libpython) from Debian's python3.11 source, with Debian's patches."""
    script = f"""set -eu
rm -rf /usr/src/python {PYTHON_PREFIX} && mkdir -p /usr/src/python && cd /usr/src/python
cat > glibc-floor.h <<'EOF'
{FLOOR_HEADER}EOF
apt-get source -qq python3.11 >/dev/null
cd python3.11-*/
# Debian's patched pyexpat.c includes core-internal headers: build it as a shared module
# with the core define, against bullseye's libexpat (bundled into the binary).
printf '*shared*\\npyexpat pyexpat.c -DPy_BUILD_CORE_MODULE -lexpat\\n' > Modules/Setup.local
./configure -q --prefix={PYTHON_PREFIX} --enable-shared --with-ensurepip=no --with-system-expat \\
    ac_cv_func_sem_clockwait=no CFLAGS_NODIST="-include /usr/src/python/glibc-floor.h" \\
    LDFLAGS=-Wl,-rpath,{PYTHON_PREFIX}/lib
make -s -j"$(nproc)" >/dev/null 2>&1
make -s altinstall >/dev/null 2>&1
ln -sf python3.11 {PYTHON_PREFIX}/bin/python3
cd / && rm -rf /usr/src/python
{PYTHON_PREFIX}/bin/python3 -c 'import ssl, lzma, bz2, ctypes, pyexpat; print(ssl.OPENSSL_VERSION)'
printf '%s\\n' '{PYTHON_BUILD}' > {PYTHON_BUILD_STAMP}
"""
    run(chroot_argv(tmp, ["sh", "-c", script]))


def _python_current(root: Path) -> bool:
    stamp = root / PYTHON_BUILD_STAMP.lstrip("/")
    return stamp.is_file() and stamp.read_text().strip() == PYTHON_BUILD


def ensure_build_root() -> Path:
    """minbase + tool chain + CPython 3.11 under /opt/python3.11, made on first use."""
    path = CACHE / f"{SUITE}-build"
    with locked(path.name):
        if (path / PYTHON_PREFIX.lstrip("/") / "bin/python3").exists():
            if not _python_current(path):  # a tree from before the current CPython build
                started = time.monotonic()
                _compile_python(path)  # removes the old one first: if stopped, no python3
                run(chroot_argv(path, ["apt-get", "clean"]))
                log(f"rebuilt CPython in {path} in {time.monotonic() - started:.0f} s")
            return path
        if path.exists():  # a CPython rebuild that was stopped half-way
            shutil.rmtree(path)
        minbase = ensure_minbase()
        tmp = _fresh(path)
        started = time.monotonic()
        run(["cp", "-a", str(minbase), str(tmp)])
        (tmp / "etc/apt/sources.list").write_text(_apt_sources())
        env = "DEBIAN_FRONTEND=noninteractive"
        run(chroot_argv(tmp, ["apt-get", "update", "-qq"]))
        install = ["env", env, "apt-get", "install", "-y", "-qq", "--no-install-recommends"]
        run(chroot_argv(tmp, [*install, *BUILD_PACKAGES]), stdout=subprocess.DEVNULL)
        _compile_python(tmp)
        run(chroot_argv(tmp, ["apt-get", "clean"]))
        tmp.rename(path)
        log(f"made {path} in {time.monotonic() - started:.0f} s")
        return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tree", choices=("minbase", "build-root"))
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        log("needs root (debootstrap, chroot)")
        return 2
    path = ensure_minbase() if args.tree == "minbase" else ensure_build_root()
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
