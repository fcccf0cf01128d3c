"""pilot.job.archive: hostile input sandboxes are refused without a byte written outside the
job directory; benign archives of every format unpack; the output sandbox is packed.

Hostile archives are generated here (tarfile.TarInfo headers, zipfile plus byte
patches), never committed; absolute targets point into tmp_path, never at /etc.
"""

from __future__ import annotations

import errno
import io
import os
import stat
import struct
import tarfile
import tempfile
import threading
import zipfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pilot.errors import DiskFullError, ExitCode, SandboxError
from pilot.job.archive import (
    ArchiveFormat,
    SandboxRejected,
    UnpackLimits,
    detect_format,
    safe_unpack,
)
from pilot.job.outpack import PackResult, pack_files, pack_output

MiB = 1 << 20
DEFAULT = UnpackLimits()
SMALL = UnpackLimits(max_total_bytes=1 * MiB, max_members=10, max_name_bytes=200)


# ------------------------------------------------------------------------ the layout


@dataclass(frozen=True)
class Layout:
    """tmp_path/root/job is the destination; everything else under tmp_path is outside."""

    base: Path
    dest: Path
    outside: Path
    src: Path

    @property
    def canary(self) -> Path:
        return self.outside / "canary"


def make_layout(base: Path) -> Layout:
    root = base / "root"
    layout = Layout(base, root / "job", root / "outside", base / "src")
    for folder in (layout.dest, layout.outside, layout.src):
        folder.mkdir(parents=True)
    layout.canary.write_text("canary\n")
    return layout


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    return make_layout(tmp_path)


def snapshot(base: Path, exclude: Path) -> dict[str, tuple[object, ...]]:
    """Type, mode, size, link count, mtime and content of everything but ``exclude``."""
    seen: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(base):
        folder = Path(dirpath)
        dirnames[:] = [d for d in dirnames if folder / d != exclude]
        for name in dirnames + filenames:
            path = folder / name
            info = path.lstat()
            if stat.S_ISLNK(info.st_mode):
                content: object = os.readlink(path)
            elif stat.S_ISREG(info.st_mode):
                content = path.read_bytes()
            else:
                content = None
            key = str(path.relative_to(base))
            seen[key] = (info.st_mode, info.st_size, info.st_nlink, info.st_mtime_ns, content)
    return seen


def tree_bytes(folder: Path) -> int:
    return sum(p.lstat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


# -------------------------------------------------------------------- archive builders


def member(
    name: str,
    data: bytes = b"",
    *,
    kind: bytes = tarfile.REGTYPE,
    link: str = "",
    mode: int = 0o644,
    pax: dict[str, str] | None = None,
) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, mode
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    if pax:
        info.pax_headers = pax
    return info, data


def make_tar(
    path: Path,
    members: Iterable[tuple[tarfile.TarInfo, bytes]],
    mode: str = "w:gz",
    fmt: int = tarfile.PAX_FORMAT,
) -> Path:
    with tarfile.open(path, mode, format=fmt, errors="surrogateescape") as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return path


@dataclass(frozen=True)
class ZipEntry:
    name: str
    data: bytes = b""
    mode: int = stat.S_IFREG | 0o644
    unix: bool = True


def make_zip(path: Path, entries: Iterable[ZipEntry]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for entry in entries:
            info = zipfile.ZipInfo(entry.name, (2024, 1, 2, 3, 4, 6))
            info.compress_type = zipfile.ZIP_DEFLATED
            if entry.unix:
                info.create_system, info.external_attr = 3, entry.mode << 16
            else:
                info.create_system = 0
            zf.writestr(info, entry.data)
    return path


def patch(path: Path, old: bytes, new: bytes, count: int = -1) -> Path:
    assert len(old) == len(new)
    data = path.read_bytes()
    assert old in data
    path.write_bytes(data.replace(old, new, count))
    return path


def patch_zip_headers(path: Path, *, size: int | None = None, flags: int = 0) -> Path:
    """Forge the local and central headers: claimed uncompressed size, extra flag bits
    (zipfile resets flag bits when it writes, so they are patched in afterwards)."""
    data = bytearray(path.read_bytes())
    for signature, flag_at, size_at in ((b"PK\x03\x04", 6, 22), (b"PK\x01\x02", 8, 24)):
        at = data.find(signature)
        while at >= 0:
            (old_flags,) = struct.unpack_from("<H", data, at + flag_at)
            struct.pack_into("<H", data, at + flag_at, old_flags | flags)
            if size is not None:
                struct.pack_into("<L", data, at + size_at, size)
            at = data.find(signature, at + 4)
    path.write_bytes(bytes(data))
    return path


# --------------------------------------------------------------------- hostile catalog

Build = Callable[[Layout], tuple[Path, str]]


@dataclass(frozen=True)
class Hostile:
    id: str
    build: Build
    limits: UnpackLimits = DEFAULT
    prefix: bool = False  # the reason only starts with the expected text


def tar_case(
    id: str,
    members: list[tuple[tarfile.TarInfo, bytes]],
    reason: str,
    *,
    mode: str = "w:gz",
    fmt: int = tarfile.PAX_FORMAT,
    limits: UnpackLimits = DEFAULT,
    prefix: bool = False,
) -> Hostile:
    def build(lay: Layout) -> tuple[Path, str]:
        return make_tar(lay.src / "in", members, mode, fmt), reason

    return Hostile(id, build, limits, prefix)


def _abs_member(lay: Layout) -> tuple[Path, str]:
    target = str(lay.outside / "abs_pwned")
    return make_tar(lay.src / "in.tar", [member(target, b"x")], "w"), f"absolute path: {target}"


def _abs_symlink(lay: Layout) -> tuple[Path, str]:
    members = [member("l", kind=tarfile.SYMTYPE, link=str(lay.outside)), member("l/pwned", b"x")]
    return make_tar(lay.src / "in", members), f"link escapes job directory: l -> {lay.outside}"


def _abs_hardlink(lay: Layout) -> tuple[Path, str]:
    members = [member("h", kind=tarfile.LNKTYPE, link=str(lay.canary))]
    return make_tar(lay.src / "in", members), f"link escapes job directory: h -> {lay.canary}"


def _dir_replaced_by_link(lay: Layout) -> tuple[Path, str]:
    members = [
        member("d", kind=tarfile.DIRTYPE, mode=0o755),
        member("d", kind=tarfile.SYMTYPE, link=str(lay.outside)),
        member("d/pwned", b"x"),
    ]
    return make_tar(lay.src / "in", members), "duplicate member: d"


def _file_replaced_by_link(lay: Layout) -> tuple[Path, str]:
    members = [
        member("f", b"harmless"),
        member("f", kind=tarfile.SYMTYPE, link=str(lay.canary)),
        member("f", b"overwrite the canary through the link"),
    ]
    return make_tar(lay.src / "in", members), "duplicate member: f"


def _preexisting_link(lay: Layout) -> tuple[Path, str]:
    (lay.dest / "pre").symlink_to(lay.outside)
    return make_tar(lay.src / "in", [member("pre/pwned", b"x")]), "write through symlink: pre/pwned"


def _lying_gzip_trailer(lay: Layout) -> tuple[Path, str]:
    path = make_tar(lay.src / "in", [member("zeros", bytes(3 * MiB))])
    data = bytearray(path.read_bytes())
    data[-4:] = struct.pack("<L", 100)  # ISIZE: "100 bytes when unpacked"
    path.write_bytes(bytes(data))
    return path, f"unpacked size exceeds {MiB} bytes"


def _lying_zip_sizes(lay: Layout) -> tuple[Path, str]:
    path = make_zip(lay.src / "in", [ZipEntry("zeros", bytes(3 * MiB))])
    return patch_zip_headers(path, size=1000), "corrupt archive: Bad CRC-32"


def _truncated(suffix: str, keep: Callable[[int], int], mode: str) -> Build:
    def build(lay: Layout) -> tuple[Path, str]:
        body = os.urandom(64 * 1024) * 4
        path = make_tar(lay.src / f"in{suffix}", [member("a", body), member("b", body)], mode)
        data = path.read_bytes()
        path.write_bytes(data[: keep(len(data))])
        return path, "corrupt archive: "

    return build


def _truncated_at_header(lay: Layout) -> tuple[Path, str]:
    # Cut exactly after the first member: tarfile alone would call that a clean end.
    path = make_tar(lay.src / "in.tar", [member("a", b"x" * 512), member("b", b"y")], "w")
    path.write_bytes(path.read_bytes()[: 3 * 512])
    return path, "corrupt archive: "


def _truncated_zip(lay: Layout) -> tuple[Path, str]:
    path = make_zip(lay.src / "in", [ZipEntry("a", os.urandom(4096))])
    path.write_bytes(path.read_bytes()[:-30])
    return path, "corrupt archive: "


def _bad_gzip_crc(lay: Layout) -> tuple[Path, str]:
    path = make_tar(lay.src / "in", [member("a", b"payload" * 100)])
    data = bytearray(path.read_bytes())
    data[-8] ^= 0xFF
    path.write_bytes(bytes(data))
    return path, "corrupt archive: "


def _garbage_after_member(lay: Layout) -> tuple[Path, str]:
    path = make_tar(lay.src / "in.tar", [member("a", b"x")], "w")
    data = bytearray(path.read_bytes())
    data[1024:1536] = b"\x42" * 512
    path.write_bytes(bytes(data))
    return path, "corrupt archive: "


def _zip_case(
    id: str, entries: list[ZipEntry], reason: str, limits: UnpackLimits = DEFAULT
) -> Hostile:
    def build(lay: Layout) -> tuple[Path, str]:
        return make_zip(lay.src / "in", entries), reason

    return Hostile(id, build, limits)


def _zip_patched(id: str, name: str, raw: bytes, flags: int, reason: str) -> Hostile:
    def build(lay: Layout) -> tuple[Path, str]:
        path = make_zip(lay.src / "in", [ZipEntry(name, b"x")])
        return patch_zip_headers(patch(path, name.encode(), raw), flags=flags), reason

    return Hostile(id, build)


def _zip_abs_symlink(lay: Layout) -> tuple[Path, str]:
    entry = ZipEntry("l", str(lay.outside).encode(), mode=stat.S_IFLNK | 0o777)
    path = make_zip(lay.src / "in", [entry, ZipEntry("l/pwned", b"x")])
    return path, f"link escapes job directory: l -> {lay.outside}"


def _zip_absolute(lay: Layout) -> tuple[Path, str]:
    target = str(lay.outside / "abs_pwned")
    return make_zip(lay.src / "in", [ZipEntry(target, b"x")]), f"absolute path: {target}"


def _unknown(content: bytes, name: str) -> Build:
    def build(lay: Layout) -> tuple[Path, str]:
        path = lay.src / name
        path.write_bytes(content)
        return path, "unknown archive format"

    return build


def _oversized_pax(lay: Layout) -> tuple[Path, str]:
    comment = "x" * (10 * MiB)
    path = make_tar(lay.src / "in", [member("a", b"x", pax={"comment": comment})])
    return path, "corrupt archive: oversized member header"


LINK, HARD = tarfile.SYMTYPE, tarfile.LNKTYPE
HOSTILE = [
    # -- paths
    tar_case("traversal", [member("../pwned", b"x")], "path escapes job directory: ../pwned"),
    tar_case(
        "traversal-nested",
        [member("a/../../outside/pwned", b"x")],
        "path escapes job directory: a/../../outside/pwned",
    ),
    Hostile("absolute", _abs_member),
    # -- symlinks
    Hostile("symlink-absolute", _abs_symlink),
    tar_case(
        "symlink-relative",
        [member("a/b/l", kind=LINK, link="../../../outside")],
        "link escapes job directory: a/b/l -> ../../../outside",
    ),
    tar_case(
        "symlink-redirected-by-later-link",
        [member("a", kind=LINK, link="b/.."), member("b", kind=LINK, link=".")],
        "link escapes job directory: a -> b/..",
    ),
    tar_case(
        "symlink-loop",
        [member("x", kind=LINK, link="y"), member("y", kind=LINK, link="x")],
        "symlink loop: y -> x",
    ),
    tar_case(
        "write-through-symlink",
        [
            member("sub", kind=tarfile.DIRTYPE, mode=0o755),
            member("l", kind=LINK, link="sub"),
            member("l/pwned", b"x"),
        ],
        "write through symlink: l/pwned",
    ),
    Hostile("write-through-preexisting-symlink", _preexisting_link),
    Hostile("dir-replaced-by-symlink", _dir_replaced_by_link),
    Hostile("file-replaced-by-symlink", _file_replaced_by_link),
    # -- hard links
    Hostile("hardlink-absolute", _abs_hardlink),
    tar_case(
        "hardlink-relative-escape",
        [member("h", kind=HARD, link="../outside/canary")],
        "link escapes job directory: h -> ../outside/canary",
    ),
    tar_case(
        "hardlink-non-member",
        [member("h", kind=HARD, link="nothere")],
        "hard link to non-member: h -> nothere",
    ),
    tar_case(
        "hardlink-to-symlink",
        [member("f", b"x"), member("l", kind=LINK, link="f"), member("h", kind=HARD, link="l")],
        "hard link to non-member: h -> l",
    ),
    # -- special files
    tar_case("chardev", [member("dev/tty", kind=tarfile.CHRTYPE)], "device file: dev/tty"),
    tar_case("blockdev", [member("./dev/sda", kind=tarfile.BLKTYPE)], "device file: dev/sda"),
    tar_case("fifo", [member("p", kind=tarfile.FIFOTYPE)], "fifo: p"),
    # -- bombs
    tar_case(
        "bomb-real-size",
        [member("zeros", bytes(3 * MiB))],
        f"unpacked size exceeds {MiB} bytes",
        mode="w:bz2",
        limits=SMALL,
    ),
    tar_case(
        "bomb-many-members-sum",
        [member(f"part{i}", bytes(400 * 1024)) for i in range(3)],
        f"unpacked size exceeds {MiB} bytes",
        mode="w:xz",
        limits=SMALL,
    ),
    Hostile("bomb-lying-gzip-trailer", _lying_gzip_trailer, SMALL),
    Hostile("bomb-lying-zip-sizes", _lying_zip_sizes, SMALL, prefix=True),
    _zip_case(
        "bomb-zip-deflate",
        [ZipEntry("zeros", bytes(3 * MiB))],
        f"unpacked size exceeds {MiB} bytes",
        limits=SMALL,
    ),
    tar_case(
        "bomb-member-count",
        [member(f"f{i}") for i in range(11)],
        "too many members (> 10)",
        limits=SMALL,
    ),
    _zip_case(
        "bomb-member-count-zip",
        [ZipEntry(f"f{i}") for i in range(11)],
        "too many members (> 10)",
        limits=SMALL,
    ),
    Hostile("oversized-pax-header", _oversized_pax),
    # -- names
    tar_case(
        "name-invalid-utf8",
        [member("caf\udce9", b"x")],
        "undecodable name: 'caf\\udce9'",
        fmt=tarfile.GNU_FORMAT,
    ),
    tar_case(
        "name-nul",
        [member("a", b"x", pax={"path": "a\x00b"})],
        "control character in name: 'a\\x00b'",
    ),
    tar_case("name-newline", [member("a\nb", b"x")], "control character in name: 'a\\nb'"),
    tar_case("name-empty", [member("", b"x")], "empty name", mode="w"),
    tar_case(
        "name-too-long", [member("n" * 300, b"x")], "name too long", limits=SMALL, prefix=True
    ),
    _zip_patched("zip-name-nul", "aXb", b"a\x00b", 0, "control character in name: 'a\\x00b'"),
    _zip_patched("zip-name-invalid-utf8", "cafXY", b"caf\xff\xfe", 0x800, "undecodable name"),
    _zip_case(
        "zip-name-control", [ZipEntry("a\x01b", b"x")], "control character in name: 'a\\x01b'"
    ),
    _zip_case("zip-name-empty", [ZipEntry("", b"x")], "empty name"),
    # -- zip specifics
    _zip_case(
        "zip-traversal", [ZipEntry("../pwned", b"x")], "path escapes job directory: ../pwned"
    ),
    Hostile("zip-absolute", _zip_absolute),
    _zip_case(
        "zip-symlink-relative",
        [ZipEntry("l", b"../outside", mode=stat.S_IFLNK | 0o777), ZipEntry("l/pwned", b"x")],
        "link escapes job directory: l -> ../outside",
    ),
    _zip_case(
        "zip-write-through-symlink",
        [ZipEntry("l", b".", mode=stat.S_IFLNK | 0o777), ZipEntry("l/pwned", b"x")],
        "write through symlink: l/pwned",
    ),
    Hostile("zip-symlink-absolute", _zip_abs_symlink),
    _zip_case("zip-chardev", [ZipEntry("tty", mode=stat.S_IFCHR | 0o666)], "device file: tty"),
    _zip_case("zip-fifo", [ZipEntry("p", mode=stat.S_IFIFO | 0o666)], "fifo: p"),
    _zip_patched("zip-encrypted", "secret", b"secret", 0x1, "encrypted member: secret"),
    # -- formats and damage
    Hostile("unknown-format-text", _unknown(b"#!/bin/sh\necho not an archive\n" * 40, "in.tar.gz")),
    Hostile("unknown-format-empty", _unknown(b"", "in.zip")),
    Hostile("truncated-gzip", _truncated(".tgz", lambda n: n // 2, "w:gz"), prefix=True),
    Hostile("truncated-gzip-trailer", _truncated(".tgz", lambda n: n - 4, "w:gz"), prefix=True),
    Hostile("truncated-xz", _truncated(".txz", lambda n: n - 100, "w:xz"), prefix=True),
    Hostile("truncated-tar-data", _truncated(".tar", lambda n: 1000, "w"), prefix=True),
    Hostile("truncated-tar-at-header", _truncated_at_header, prefix=True),
    Hostile("truncated-zip", _truncated_zip, prefix=True),
    Hostile("bad-gzip-crc", _bad_gzip_crc, prefix=True),
    Hostile("garbage-header", _garbage_after_member, prefix=True),
]


@pytest.mark.parametrize("case", HOSTILE, ids=[c.id for c in HOSTILE])
def test_hostile_archive_rejected_and_nothing_written_outside(
    case: Hostile, layout: Layout
) -> None:
    archive, reason = case.build(layout)
    before = snapshot(layout.base, layout.dest)

    with pytest.raises(SandboxRejected) as caught:
        safe_unpack(archive, layout.dest, case.limits)

    assert snapshot(layout.base, layout.dest) == before
    got = caught.value.reason
    assert got.startswith(reason) if case.prefix else got == reason, got
    assert str(caught.value) == f"Input sandbox rejected: {got}"
    assert tree_bytes(layout.dest) <= case.limits.max_total_bytes


def test_catalog_covers_the_required_kinds() -> None:
    assert len(HOSTILE) >= 15
    assert len({c.id for c in HOSTILE}) == len(HOSTILE)


def test_rejection_is_a_sandbox_error_with_its_exit_code() -> None:
    exc = SandboxRejected("fifo: p")
    assert isinstance(exc, SandboxError)
    assert exc.exit_code is ExitCode.SANDBOX
    assert exc.reason == "fifo: p"
    assert str(exc) == "Input sandbox rejected: fifo: p"


# ------------------------------------------------------------------------------ benign

SCRIPT = b"#!/bin/sh\necho ran\n"


def benign_tar(path: Path, mode: str) -> Path:
    long_dir = "long/" + "d" * 120
    return make_tar(
        path,
        [
            member("./", kind=tarfile.DIRTYPE, mode=0o755),
            member("./bin", kind=tarfile.DIRTYPE, mode=0o755),
            member("./bin/run.sh", SCRIPT, mode=0o755),
            member("./data/a.txt", b"hello\n"),
            member("./data/empty", b""),
            member("./private", kind=tarfile.DIRTYPE, mode=0o700),
            member("./latest", kind=LINK, link="data/a.txt"),
            member("./up/link", kind=LINK, link="../data"),
            member("./again", kind=HARD, link="./data/a.txt"),
            member(f"{long_dir}/file", b"long"),
        ],
        mode,
    )


def benign_zip(path: Path) -> Path:
    return make_zip(
        path,
        [
            ZipEntry("bin/", mode=stat.S_IFDIR | 0o755),
            ZipEntry("bin/run.sh", SCRIPT, mode=stat.S_IFREG | 0o755),
            ZipEntry("data/a.txt", b"hello\n"),
            ZipEntry("data/empty", b""),
            ZipEntry("private/", mode=stat.S_IFDIR | 0o700),
            ZipEntry("latest", b"data/a.txt", mode=stat.S_IFLNK | 0o777),
            ZipEntry("up/link", b"../data", mode=stat.S_IFLNK | 0o777),
            ZipEntry("dos.txt", b"from a non-unix zip", unix=False),
        ],
    )


FORMATS = {
    ArchiveFormat.TAR: lambda p: benign_tar(p, "w"),
    ArchiveFormat.TAR_GZ: lambda p: benign_tar(p, "w:gz"),
    ArchiveFormat.TAR_BZ2: lambda p: benign_tar(p, "w:bz2"),
    ArchiveFormat.TAR_XZ: lambda p: benign_tar(p, "w:xz"),
    ArchiveFormat.ZIP: benign_zip,
}


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_benign_archive_unpacks_with_content_modes_and_links(
    fmt: ArchiveFormat, layout: Layout
) -> None:
    archive = FORMATS[fmt](layout.src / "input.bin")  # the name says nothing
    assert detect_format(archive) is fmt
    before = snapshot(layout.base, layout.dest)

    names = safe_unpack(archive, layout.dest)

    assert snapshot(layout.base, layout.dest) == before
    dest = layout.dest
    assert {"bin", "bin/run.sh", "data/a.txt", "data/empty", "latest", "up/link"} <= set(names)
    assert (dest / "data/a.txt").read_bytes() == b"hello\n"
    assert (dest / "data/empty").read_bytes() == b""
    assert stat.S_IMODE((dest / "bin/run.sh").stat().st_mode) == 0o755
    assert stat.S_IMODE((dest / "data/a.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((dest / "private").stat().st_mode) == 0o700
    assert os.readlink(dest / "latest") == "data/a.txt"
    assert (dest / "latest").read_bytes() == b"hello\n"
    assert (dest / "up/link/a.txt").read_bytes() == b"hello\n"
    ran = psutil.Popen([dest / "bin/run.sh"], stdout=-1)
    assert ran.communicate(timeout=10)[0] == b"ran\n"
    if fmt is ArchiveFormat.ZIP:
        assert stat.S_IMODE((dest / "dos.txt").stat().st_mode) == 0o644
    else:
        assert "." not in names and "" not in names
        assert (dest / "again").stat().st_ino == (dest / "data/a.txt").stat().st_ino
        assert (dest / "long" / ("d" * 120) / "file").read_bytes() == b"long"


def test_special_mode_bits_are_stripped_not_rejected(layout: Layout) -> None:
    archive = make_tar(
        layout.src / "in.tar",
        [
            member("suid", b"x", mode=0o4755),
            member("sgid", b"x", mode=0o2755),
            member("world", b"x", mode=0o666 | 0o002),
            member("sticky", kind=tarfile.DIRTYPE, mode=0o1777),
            member("unreadable", b"x", mode=0o000),
        ],
        "w",
    )
    safe_unpack(archive, layout.dest)
    modes = {p.name: stat.S_IMODE(p.lstat().st_mode) for p in layout.dest.iterdir()}
    assert modes == {
        "suid": 0o755,
        "sgid": 0o755,
        "world": 0o644,
        "sticky": 0o755,
        "unreadable": 0o600,
    }


def test_zip_special_mode_bits_are_stripped(layout: Layout) -> None:
    archive = make_zip(layout.src / "in", [ZipEntry("suid", b"x", mode=stat.S_IFREG | 0o6777)])
    safe_unpack(archive, layout.dest)
    assert stat.S_IMODE((layout.dest / "suid").stat().st_mode) == 0o755


def test_zip_name_without_utf8_flag_is_cp437(layout: Layout) -> None:
    archive = patch(make_zip(layout.src / "in", [ZipEntry("cafX", b"x")]), b"cafX", b"caf\x82")
    assert safe_unpack(archive, layout.dest) == ["café"]
    assert (layout.dest / "café").read_bytes() == b"x"


def test_empty_archives(layout: Layout) -> None:
    empty_tar = make_tar(layout.src / "empty.tar", [], "w")
    empty_zip = make_zip(layout.src / "empty.zip", [])
    assert detect_format(empty_tar) is ArchiveFormat.TAR
    assert detect_format(empty_zip) is ArchiveFormat.ZIP
    assert safe_unpack(empty_tar, layout.dest) == []
    assert safe_unpack(empty_zip, layout.dest) == []


def test_old_v7_tar_is_recognised_by_its_checksum(layout: Layout) -> None:
    path = make_tar(layout.src / "in", [member("old.txt", b"v7")], "w", tarfile.USTAR_FORMAT)
    data = bytearray(path.read_bytes())
    data[257:265] = bytes(8)  # no "ustar" magic: a V7 header
    data[148:156] = b" " * 8
    data[148:156] = b"%06o\0 " % sum(data[:512])
    path.write_bytes(bytes(data))
    assert detect_format(path) is ArchiveFormat.TAR
    assert safe_unpack(path, layout.dest) == ["old.txt"]
    assert (layout.dest / "old.txt").read_bytes() == b"v7"


def test_format_comes_from_content_not_name(layout: Layout) -> None:
    archive = make_tar(layout.src / "looks.zip", [member("a", b"x")], "w:bz2")
    assert detect_format(archive) is ArchiveFormat.TAR_BZ2


def test_unpack_into_existing_directory_keeps_its_content(layout: Layout) -> None:
    (layout.dest / "mine").write_text("kept")
    (layout.dest / "pre").symlink_to(layout.outside)  # a link already there is fine...
    archive = make_tar(layout.src / "in", [member("new", b"x"), member("l", kind=LINK, link="new")])
    assert safe_unpack(archive, layout.dest) == ["new", "l"]
    assert (layout.dest / "mine").read_text() == "kept"
    assert (layout.dest / "l").read_bytes() == b"x"
    bad = make_tar(layout.src / "bad", [member("l2", kind=LINK, link="pre/canary")])
    with pytest.raises(SandboxRejected, match="link escapes job directory: l2 -> pre/canary"):
        safe_unpack(bad, layout.dest)  # ...but no new link may point out through it


def test_missing_archive_is_a_sandbox_error(layout: Layout) -> None:
    with pytest.raises(SandboxError, match="cannot read archive"):
        safe_unpack(layout.src / "nothere", layout.dest)


# ----------------------------------------------------------------- random archives

# Mostly plain member names, so that many archives unpack and the invariant is really
# checked; link targets climb with ".." often.
NAME = st.lists(st.sampled_from(["a", "b", "c"] * 4 + ["pre", ".", ".."]), min_size=1, max_size=3)
TARGET = st.lists(st.sampled_from(["a", "b", "c", "pre", ".", ".."]), min_size=1, max_size=4)
ENTRY = st.tuples(
    st.sampled_from(["file", "dir", "dir", "link", "link", "hard"]),
    NAME.map("/".join),
    st.one_of(TARGET.map("/".join), st.just("ABS")),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(ENTRY, max_size=6))
def test_random_archives_never_write_or_point_outside(entries: list[tuple[str, str, str]]) -> None:
    kinds = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "link": LINK, "hard": HARD}
    with tempfile.TemporaryDirectory() as tmp:
        lay = make_layout(Path(tmp))
        (lay.dest / "pre").symlink_to(lay.outside)  # left behind by someone else
        members = [
            member(
                name,
                b"x" if kind == "file" else b"",
                kind=kinds[kind],
                link=str(lay.outside) if target == "ABS" else target,
            )
            for kind, name, target in entries
        ]
        archive = make_tar(lay.src / "in.tar", members, "w")
        before = snapshot(lay.base, lay.dest)
        try:
            safe_unpack(archive, lay.dest)
        except SandboxRejected:
            pass
        else:
            assert_everything_resolves_inside(lay.dest, allowed={lay.dest / "pre"})
        assert snapshot(lay.base, lay.dest) == before


def assert_everything_resolves_inside(dest: Path, allowed: set[Path]) -> None:
    root = os.path.realpath(dest)
    for dirpath, dirnames, filenames in os.walk(dest):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            if path in allowed:
                continue
            real = os.path.realpath(path)
            assert real == root or real.startswith(root + os.sep), (path, real)


# --------------------------------------------------------------------------- memory


class Zeros(io.RawIOBase):
    def __init__(self, size: int) -> None:
        self.left = size

    def read(self, size: int = -1) -> bytes:
        size = self.left if size < 0 else min(size, self.left)
        self.left -= size
        return bytes(size)


@contextmanager
def peak_rss() -> Iterator[list[int]]:
    """Sample this process's RSS every few ms; yields [baseline, peak]."""
    proc = psutil.Process()
    result = [proc.memory_info().rss] * 2
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.005):
            result[1] = max(result[1], proc.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield result
    finally:
        stop.set()
        sampler.join()


def test_200_mb_archive_unpacks_with_flat_memory(tmp_path: Path) -> None:
    size = 200 * MiB
    archive = tmp_path / "big.tgz"
    with tarfile.open(archive, "w:gz", compresslevel=1) as tf:
        info = tarfile.TarInfo("big.bin")
        info.size = size
        tf.addfile(info, Zeros(size))
    assert archive.stat().st_size < 2 * MiB

    with peak_rss() as rss:
        names = safe_unpack(archive, tmp_path / "job")

    assert names == ["big.bin"]
    assert (tmp_path / "job/big.bin").stat().st_size == size
    assert rss[1] - rss[0] < 30 * MiB, f"RSS grew by {(rss[1] - rss[0]) / MiB:.1f} MiB"


# ----------------------------------------------------------------------------- pack


@pytest.fixture
def job(layout: Layout) -> Path:
    files = {
        "StdOut": b"o" * 10,
        "StdErr": b"e" * 10,
        "log.txt": b"log",
        ".hidden.txt": b"h",
        "out/a.root": b"a" * 600,
        "out/b.root": b"b" * 600,
        "out/sub/c.txt": b"c",
    }
    for name, data in files.items():
        (layout.dest / name).parent.mkdir(parents=True, exist_ok=True)
        (layout.dest / name).write_bytes(data)
    (layout.dest / "out/a.root").chmod(0o755)
    return layout.dest


def archive_content(path: Path) -> dict[str, bytes | str]:
    """name -> data for files, "-> target" for symlinks."""
    found: dict[str, bytes | str] = {}
    with tarfile.open(path) as tf:
        for info in tf:
            if info.issym():
                found[info.name] = f"-> {info.linkname}"
            elif info.isdir():
                found[info.name] = "dir"
            else:
                src = tf.extractfile(info)
                assert src is not None
                found[info.name] = src.read()
    return found


def test_pack_globs(job: Path, layout: Layout) -> None:
    out = layout.src / "out.tgz"
    result = pack_output(job, ["*.txt", "out/*.root", "**/c.txt"], out, max_bytes=10**6)
    assert result == PackResult(
        ("log.txt", "out/a.root", "out/b.root", "out/sub/c.txt"), (), (), 1204
    )
    content = archive_content(out)
    assert content == {
        "log.txt": b"log",
        "out/a.root": b"a" * 600,
        "out/b.root": b"b" * 600,
        "out/sub/c.txt": b"c",
    }
    with tarfile.open(out) as tf:
        assert stat.S_IMODE(tf.getmember("out/a.root").mode) == 0o755


def test_pack_directories_recursively_and_explicit_dot_files(job: Path, layout: Layout) -> None:
    out = layout.src / "out.tgz"
    result = pack_output(job, ["out", ".hidden.txt", "out/sub"], out, max_bytes=10**6)
    assert result.included == ("out/a.root", "out/b.root", "out/sub/c.txt", ".hidden.txt")
    assert set(archive_content(out)) == set(result.included)


def test_pack_reports_missing_and_refused_patterns(job: Path, layout: Layout) -> None:
    out = layout.src / "out.tgz"
    patterns = ["nothing*", str(layout.canary), "../outside/canary", "out/../StdOut", ""]
    result = pack_output(job, [*patterns, "StdOut"], out, max_bytes=10**6)
    assert result.missing == tuple(patterns)
    assert result.included == ("StdOut",)
    assert archive_content(out) == {"StdOut": b"o" * 10}


def test_pack_size_cap_keeps_priority_files(job: Path, layout: Layout) -> None:
    out = layout.src / "out.tgz"
    result = pack_output(job, ["out", "*"], out, max_bytes=1000, priority=("StdOut", "StdErr"))
    assert result.included == ("StdOut", "StdErr", "out/a.root", "out/sub/c.txt", "log.txt")
    assert result.dropped == ("out/b.root",)
    assert result.size == 10 + 10 + 600 + 1 + 3 <= 1000
    assert set(archive_content(out)) == set(result.included)


def test_pack_never_follows_links_out_of_the_job(job: Path, layout: Layout) -> None:
    (job / "escape_dir").symlink_to(layout.outside)
    (job / "escape_file").symlink_to(layout.canary)
    (job / "absolute").symlink_to(job / "StdOut")
    (job / "inside").symlink_to("out/a.root")
    (job / "out/up").symlink_to("..")
    out = layout.src / "out.tgz"
    patterns = ["escape_dir/*", "escape_dir", "escape_file", "absolute", "inside", "out/up"]
    result = pack_output(job, patterns, out, max_bytes=10**6)
    assert result.missing == ("escape_dir/*",)
    assert result.included == ("inside", "out/up")
    assert result.skipped == ("escape_dir", "escape_file", "absolute")
    content = archive_content(out)
    assert content == {"inside": "-> out/a.root", "out/up": "-> .."}
    assert not any(b"canary" in v for v in content.values() if isinstance(v, bytes))
    back = layout.base / "back"
    assert safe_unpack(out, back) == ["inside", "out/up"]
    assert os.readlink(back / "inside") == "out/a.root"


def test_pack_does_not_pack_its_own_output(job: Path) -> None:
    result = pack_output(job, ["*"], job / "output.tgz", max_bytes=10**6)
    assert "output.tgz" not in result.included
    assert "output.tgz.part" not in result.included
    assert set(result.included) == {
        "StdOut",
        "StdErr",
        "log.txt",
        "out/a.root",
        "out/b.root",
        "out/sub/c.txt",
    }


def test_packed_output_round_trips_through_safe_unpack(job: Path, layout: Layout) -> None:
    out = layout.src / "out.tgz"
    result = pack_output(job, ["*"], out, max_bytes=10**6)
    back = layout.base / "back"
    assert sorted(safe_unpack(out, back)) == sorted(result.included)
    for name in result.included:
        assert (back / name).read_bytes() == (job / name).read_bytes()


def test_pack_files_uses_the_given_names(layout: Layout) -> None:
    one, two = layout.src / "one.sh", layout.src / "sub"
    one.write_bytes(SCRIPT)
    one.chmod(0o755)
    two.mkdir()
    (two / "data").write_text("d")
    link = layout.src / "via-link"
    link.symlink_to(one)
    out = layout.base / "in.tgz"
    pack_files([(one, "run.sh"), (two, "inputs"), (link, "copy.sh")], out)
    content = archive_content(out)
    assert content == {"run.sh": SCRIPT, "inputs": "dir", "inputs/data": b"d", "copy.sh": SCRIPT}
    assert safe_unpack(out, layout.dest)
    assert stat.S_IMODE((layout.dest / "run.sh").stat().st_mode) == 0o755


@pytest.mark.parametrize("arcname", ["../x", "/abs", "", "a/../b", "new\nline"])
def test_pack_files_refuses_bad_names(arcname: str, layout: Layout) -> None:
    (layout.src / "f").write_text("x")
    with pytest.raises(SandboxError, match="invalid or duplicate"):
        pack_files([(layout.src / "f", arcname)], layout.base / "in.tgz")


def test_pack_files_refuses_duplicates_and_missing_files(layout: Layout) -> None:
    (layout.src / "f").write_text("x")
    with pytest.raises(SandboxError, match="invalid or duplicate"):
        pack_files([(layout.src / "f", "a"), (layout.src / "f", "./a")], layout.base / "in.tgz")
    with pytest.raises(SandboxError, match="not found"):
        pack_files([(layout.src / "nothere", "a")], layout.base / "in.tgz")
    assert not (layout.base / "in.tgz").exists()


def test_pack_skips_names_the_unpacker_would_refuse(job: Path, layout: Layout) -> None:
    (job / "bad\nname").write_text("x")
    (job / os.fsdecode(b"caf\xe9")).write_text("x")  # not UTF-8
    (job / "ctl-link").symlink_to("StdOut\x01")
    out = layout.src / "out.tgz"
    result = pack_output(job, ["bad*", "caf*", "ctl-link", "StdOut"], out, max_bytes=10**6)
    assert result.included == ("StdOut",)
    assert set(result.skipped) == {"bad\nname", os.fsdecode(b"caf\xe9"), "ctl-link"}
    assert safe_unpack(out, layout.base / "back") == ["StdOut"]


def test_pack_output_failures_are_sandbox_errors(job: Path, layout: Layout) -> None:
    with pytest.raises(SandboxError, match="cannot write sandbox archive"):
        pack_output(job, ["*"], layout.base / "no" / "such" / "dir.tgz", max_bytes=10**6)
    with pytest.raises(SandboxError, match="cannot write sandbox archive"):
        pack_output(layout.base / "nojob", ["*"], layout.src / "out.tgz", max_bytes=10**6)
    assert not (layout.src / "out.tgz").exists()
    assert not (layout.src / "out.tgz.part").exists()


def test_input_sandbox_archives_are_deterministic(tmp_path: Path) -> None:
    """The same files make the same bytes, whatever their time stamps, owners or the order
    they are given in: the stub then stores a re-submitted sandbox once."""
    src = tmp_path / "src"
    (src / "dir" / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("alpha\n")
    (src / "dir" / "b.txt").write_text("beta\n")
    (src / "dir" / "sub" / "c.txt").write_text("gamma\n")
    files = [(src / "a.txt", "a.txt"), (src / "dir", "dir")]
    pack_files(files, tmp_path / "one.tar.gz")
    for path in (src / "a.txt", src / "dir" / "b.txt", src / "dir"):
        os.utime(path, (2e9, 2e9))
    pack_files(list(reversed(files)), tmp_path / "two.tar.gz")
    one, two = (tmp_path / "one.tar.gz").read_bytes(), (tmp_path / "two.tar.gz").read_bytes()
    assert one == two
    assert one[4:8] == b"\0\0\0\0"  # no time in the gzip header
    with tarfile.open(tmp_path / "one.tar.gz") as tf:
        members = tf.getmembers()
    assert [m.name for m in members] == ["a.txt", "dir", "dir/b.txt", "dir/sub", "dir/sub/c.txt"]
    assert {(m.uid, m.gid, m.uname, m.mtime) for m in members} == {(0, 0, "", 315532800)}


# ------------------------------------------------------------------------ a full disk


class _FullDiskOs:
    """``os`` as :mod:`pilot.job.archive` sees it, on a disk with no space left."""

    def __getattr__(self, name: str) -> object:
        return getattr(os, name)

    @staticmethod
    def write(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_unpacking_onto_a_full_disk_is_disk_full(
    layout: Layout, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pilot.job import archive

    tar = make_tar(layout.src / "in.tgz", [member("data.bin", b"x" * 5000)])
    monkeypatch.setattr(archive, "os", _FullDiskOs())
    with pytest.raises(DiskFullError, match=r"no space left while unpacking data\.bin") as caught:
        safe_unpack(tar, layout.dest)
    assert caught.value.exit_code is ExitCode.DISK_FULL


def test_packing_onto_a_full_disk_is_disk_full(job: Path, layout: Layout) -> None:
    """/dev/full behind the side file: every write fails with ENOSPC; nothing is left."""
    out = layout.src / "out.tgz"
    (layout.src / "out.tgz.part").symlink_to("/dev/full")
    with pytest.raises(DiskFullError, match="cannot write sandbox archive"):
        pack_output(job, ["*"], out, max_bytes=10**6)
    assert not out.exists() and not (layout.src / "out.tgz.part").exists()
