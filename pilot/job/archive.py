"""Sandbox archives: unpack untrusted input safely (packing is in :mod:`pilot.job.outpack`).

:func:`safe_unpack` never writes outside ``dest``. The format comes from magic bytes;
``tarfile``/``zipfile`` serve only as parsers: every change to the file system is made
here through directory fds opened ``O_NOFOLLOW`` and files created ``O_EXCL|O_NOFOLLOW``,
so no link is ever followed. Names are checked; a member under a link, or replacing an
earlier member, is refused; symlinks are created last, once every target has been
resolved against the archive's final set of links; hard links must name a file already
extracted; devices and FIFOs are refused; setuid/setgid/sticky and group/world write
bits are dropped. Size and member limits count what is really produced, while streaming
in 1 MiB chunks, so lying headers change nothing. On rejection, files already extracted
may remain inside ``dest``: the caller removes the job directory.
"""

from __future__ import annotations

import bz2
import errno
import gzip
import io
import logging
import lzma
import os
import stat
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Final, NoReturn, Self

from pilot.errors import DiskFullError, SandboxError, is_disk_full
from pilot.job.fssafe import (
    DIR_FLAGS,
    NEW_FILE,
    Escapes,
    Kind,
    LinkMap,
    SandboxRejected,
    check_text,
)

log = logging.getLogger(__name__)

CHUNK: Final = 1 << 20
_HEADER_BUDGET: Final = 8 << 20  # bytes tarfile may read to parse one member's headers
_ZIP_UNIX: Final = 3
_ZIP_ENCRYPTED: Final = 0x1
_SPECIAL: Final = {stat.S_IFCHR: "device file", stat.S_IFBLK: "device file", stat.S_IFIFO: "fifo"}
# What damaged archives make the parsers raise (write-side OSErrors are translated first).
_PARSERS: Final = (tarfile.TarError, zipfile.BadZipFile, lzma.LZMAError, zlib.error, struct.error)
_CORRUPT: Final = (*_PARSERS, OSError, EOFError, ValueError, RuntimeError)


class ArchiveFormat(StrEnum):
    TAR = "tar"
    TAR_GZ = "tar.gz"
    TAR_BZ2 = "tar.bz2"
    TAR_XZ = "tar.xz"
    ZIP = "zip"


@dataclass(frozen=True)
class UnpackLimits:
    max_total_bytes: int = 10 * 2**30
    max_members: int = 100_000
    max_name_bytes: int = 4096


_MAGIC: Final = (
    (b"\x1f\x8b", ArchiveFormat.TAR_GZ),
    (b"BZh", ArchiveFormat.TAR_BZ2),
    (b"\xfd7zXZ\x00", ArchiveFormat.TAR_XZ),
    (b"PK\x03\x04", ArchiveFormat.ZIP),
    (b"PK\x05\x06", ArchiveFormat.ZIP),
)


def detect_format(path: Path) -> ArchiveFormat:
    """Recognise the archive format from the content of ``path``."""
    try:
        with path.open("rb") as fh:
            head = fh.read(2 * tarfile.BLOCKSIZE)
    except OSError as exc:
        raise SandboxError(f"cannot read archive {path}: {exc.strerror}") from exc
    for magic, fmt in _MAGIC:
        if head.startswith(magic):
            return fmt
    if _looks_like_tar(head):
        return ArchiveFormat.TAR
    raise SandboxRejected("unknown archive format")


def _looks_like_tar(head: bytes) -> bool:
    block = head[: tarfile.BLOCKSIZE]
    if len(block) < tarfile.BLOCKSIZE:
        return False
    if head == bytes(2 * tarfile.BLOCKSIZE) or block[257:262] == b"ustar":
        return True  # an empty archive is just its end marker; or a POSIX/GNU header
    field = block[148:156].replace(b"\0", b" ").strip()
    try:
        stored = int(field, 8)
    except ValueError:
        return False
    return stored == sum(block[:148]) + 8 * ord(" ") + sum(block[156:])  # old V7 header


def _member_parts(name: str, limits: UnpackLimits) -> tuple[str, ...]:
    """Validate a member name; return its components ("" and "." dropped)."""
    if not name:
        raise SandboxRejected("empty name")
    check_text(name)
    if len(name.encode()) > limits.max_name_bytes:
        raise SandboxRejected(f"name too long: {name[:80]}...")
    if name.startswith("/"):
        raise SandboxRejected(f"absolute path: {name}")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise SandboxRejected(f"path escapes job directory: {name}")
    return parts


@contextmanager
def _fs_errors(name: str) -> Iterator[None]:
    """Turn a file-system error while creating ``name`` into a PilotError."""
    try:
        yield
    except OSError as exc:
        if is_disk_full(exc):
            raise DiskFullError(f"no space left while unpacking {name}") from exc
        known = {
            errno.EEXIST: "duplicate member",
            errno.ELOOP: "write through symlink",
            errno.ENOTDIR: "parent is not a directory",
        }
        if exc.errno in known:
            raise SandboxRejected(f"{known[exc.errno]}: {name}") from exc
        raise SandboxError(f"cannot unpack {name}: {exc.strerror}") from exc


def _guarded(read: Callable[[int], bytes]) -> Callable[[int], bytes]:
    def guarded_read(size: int) -> bytes:
        try:
            return read(size)
        except _CORRUPT as exc:
            raise SandboxRejected(f"corrupt archive: {exc}") from exc

    return guarded_read


class _Sink:
    """Creates members under ``dest``; never follows a link, never leaves ``dest``."""

    def __init__(self, dest: Path, limits: UnpackLimits) -> None:
        self.limits = limits
        try:
            dest.mkdir(parents=True, exist_ok=True)
            self.root = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise SandboxError(f"cannot use job directory {dest}: {exc.strerror}") from exc
        self.kinds: dict[tuple[str, ...], Kind] = {}
        self.links = LinkMap()  # includes links already in dest: they resolve too
        self.new_links: list[tuple[str, ...]] = []
        self.names: list[str] = []
        self.members = 0
        self.written = 0
        self.cached: tuple[tuple[str, ...], int] | None = None
        for folder, dirs, files in os.walk(dest):  # links already there count as ours
            for entry in dirs + files:
                path = Path(folder, entry)
                if path.is_symlink():
                    parts = path.relative_to(dest).parts
                    self.kinds[parts] = Kind.LINK
                    self.links.targets[parts] = os.readlink(path)

    def close(self) -> None:
        os.close(self.root)
        if self.cached is not None:
            os.close(self.cached[1])

    def begin(self) -> None:
        self.members += 1
        if self.members > self.limits.max_members:
            raise SandboxRejected(f"too many members (> {self.limits.max_members})")

    def account(self, size: int) -> None:
        self.written += size
        if self.written > self.limits.max_total_bytes:
            raise SandboxRejected(f"unpacked size exceeds {self.limits.max_total_bytes} bytes")

    def refuse(self, name: str, what: str) -> NoReturn:
        parts = _member_parts(name, self.limits)
        raise SandboxRejected(f"{what}: {'/'.join(parts)}")

    def _claim(self, name: str, kind: Kind) -> tuple[str, ...]:
        parts = _member_parts(name, self.limits)
        if not parts:
            if kind is Kind.DIR:
                return parts  # "./": the destination itself
            raise SandboxRejected(f"empty name: {name}")
        old = self.kinds.get(parts)
        if old is not None and not (old is kind is Kind.DIR):
            raise SandboxRejected(f"duplicate member: {'/'.join(parts)}")
        if old is None:
            self.kinds[parts] = kind
            self.names.append("/".join(parts))
        return parts

    @contextmanager
    def _parent(self, parts: tuple[str, ...], name: str) -> Iterator[int]:
        """Yield an fd of the directory that holds ``parts``, creating missing ones.

        The last one is kept open for the next member: a path seen as a directory
        stays one, since nothing is ever replaced.
        """
        key = parts[:-1]
        if self.cached is not None and self.cached[0] == key:
            fd, self.cached = self.cached[1], None
        else:
            fd = os.dup(self.root)
            try:
                for i in range(len(key)):
                    nxt = self._enter(fd, key[: i + 1], name)
                    os.close(fd)
                    fd = nxt
            except BaseException:
                os.close(fd)
                raise
        try:
            yield fd
        finally:
            if self.cached is not None:
                os.close(self.cached[1])
            self.cached = (key, fd)

    def _enter(self, fd: int, prefix: tuple[str, ...], name: str) -> int:
        kind = self.kinds.get(prefix)
        if kind is Kind.LINK:
            raise SandboxRejected(f"write through symlink: {name}")
        if kind is Kind.FILE:
            raise SandboxRejected(f"parent is not a directory: {name}")
        with _fs_errors(name):
            if kind is None:
                with suppress(FileExistsError):
                    os.mkdir(prefix[-1], 0o755, dir_fd=fd)
                self.kinds[prefix] = Kind.DIR
            try:
                return os.open(prefix[-1], DIR_FLAGS, dir_fd=fd)
            except NotADirectoryError:  # O_NOFOLLOW|O_DIRECTORY on a link says ENOTDIR
                if stat.S_ISLNK(os.lstat(prefix[-1], dir_fd=fd).st_mode):
                    raise SandboxRejected(f"write through symlink: {name}") from None
                raise

    def add_dir(self, name: str, mode: int) -> None:
        parts = self._claim(name, Kind.DIR)
        if not parts:
            return
        with self._parent(parts, name) as parent, _fs_errors(name):
            with suppress(FileExistsError):
                os.mkdir(parts[-1], 0o700, dir_fd=parent)
            fd = os.open(parts[-1], DIR_FLAGS, dir_fd=parent)
            try:
                os.fchmod(fd, (mode & 0o755) | 0o700)
            finally:
                os.close(fd)

    def add_file(
        self, name: str, read: Callable[[int], bytes], mode: int, mtime: float | None
    ) -> None:
        parts = self._claim(name, Kind.FILE)
        with self._parent(parts, name) as parent:
            with _fs_errors(name):
                fd = os.open(parts[-1], NEW_FILE, 0o600, dir_fd=parent)
            try:
                self._copy(_guarded(read), fd, name)
                with _fs_errors(name):
                    os.fchmod(fd, (mode & 0o755) | 0o600)
                if mtime is not None:
                    with suppress(OSError, OverflowError, ValueError):
                        os.utime(fd, (mtime, mtime))
            finally:
                os.close(fd)

    def _copy(self, read: Callable[[int], bytes], fd: int, name: str) -> None:
        while chunk := read(CHUNK):
            self.account(len(chunk))  # checked before the bytes reach the disk
            view = memoryview(chunk)
            with _fs_errors(name):
                while view:
                    view = view[os.write(fd, view) :]

    def add_symlink(self, name: str, target: str) -> None:
        parts = self._claim(name, Kind.LINK)
        shown = "/".join(parts)
        if not target:
            raise SandboxRejected(f"empty link target: {shown}")
        check_text(target, "link target")
        if len(target.encode()) > self.limits.max_name_bytes:
            raise SandboxRejected(f"link target too long: {shown}")
        with self._parent(parts, name):
            pass  # create the parents now; the link itself is made by finish()
        self.links.targets[parts] = target
        self.new_links.append(parts)
        self._check_link(parts)

    def _check_link(self, parts: tuple[str, ...]) -> None:
        try:
            self.links.check(parts)
        except Escapes as exc:
            target = self.links.targets[parts]
            raise SandboxRejected(f"{exc}: {'/'.join(parts)} -> {target}") from None

    def add_hardlink(self, name: str, target: str) -> None:
        parts = self._claim(name, Kind.FILE)
        shown = f"{'/'.join(parts)} -> {target}"
        check_text(target, "link target")
        if target.startswith("/") or ".." in target.split("/"):
            raise SandboxRejected(f"link escapes job directory: {shown}")
        tparts = tuple(p for p in target.split("/") if p not in ("", "."))
        if tparts == parts or self.kinds.get(tparts) is not Kind.FILE:
            raise SandboxRejected(f"hard link to non-member: {shown}")
        with (
            self._parent(tparts, name) as src,
            self._parent(parts, name) as dst,
            _fs_errors(name),
        ):
            os.link(tparts[-1], parts[-1], src_dir_fd=src, dst_dir_fd=dst, follow_symlinks=False)

    def finish(self) -> list[str]:
        """Check every symlink against the final set of links, then create them."""
        for parts in self.new_links:
            self._check_link(parts)
        for parts in self.new_links:
            name = "/".join(parts)
            with self._parent(parts, name) as parent, _fs_errors(name):
                os.symlink(self.links.targets[parts], parts[-1], dir_fd=parent)
        return self.names


class _StrictInfo(tarfile.TarInfo):
    """A TarInfo that treats any damaged header as corruption, not as the end."""

    @classmethod
    def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> Self:
        if len(buf) == tarfile.BLOCKSIZE and buf.count(0) == tarfile.BLOCKSIZE:
            return super().frombuf(buf, encoding, errors)  # end-of-archive marker
        try:
            return super().frombuf(buf, encoding, errors)
        except tarfile.HeaderError as exc:
            raise SandboxRejected(f"corrupt archive: {exc or 'unexpected end of data'}") from None


class _Reader(tarfile.TarFile):
    """TarFile that forgets headers once read (it would keep them all in memory)."""

    tarinfo = _StrictInfo
    members: list[tarfile.TarInfo]

    def next(self) -> tarfile.TarInfo | None:
        info = super().next()
        self.members.clear()
        return info


class _MeteredReader:
    """Decompressed stream handed to tarfile; ``budget`` bounds a header's reads."""

    def __init__(self, raw: io.BufferedIOBase) -> None:
        self.raw = raw
        self.budget: int | None = _HEADER_BUDGET

    def read(self, size: int = -1, /) -> bytes:
        if self.budget is not None:
            if size < 0 or size > self.budget:
                raise SandboxRejected("corrupt archive: oversized member header")
            self.budget -= size
        return self.raw.read(size)

    def write(self, b: bytes, /) -> int:
        raise io.UnsupportedOperation("read-only")

    def seek(self, pos: int, whence: int = 0, /) -> int:
        return self.raw.seek(pos, whence)

    def tell(self) -> int:
        return self.raw.tell()

    def close(self) -> None:
        """The stream belongs to the caller."""


def _decompressed(path: Path, fmt: ArchiveFormat) -> io.BufferedIOBase:
    if fmt is ArchiveFormat.TAR_GZ:
        return gzip.open(path, "rb")
    if fmt is ArchiveFormat.TAR_BZ2:
        return bz2.open(path, "rb")
    if fmt is ArchiveFormat.TAR_XZ:
        return lzma.open(path, "rb")
    return path.open("rb")


def _unpack_tar(archive: Path, fmt: ArchiveFormat, sink: _Sink) -> None:
    with _decompressed(archive, fmt) as raw:
        meter = _MeteredReader(raw)
        with _Reader.open(
            fileobj=meter, mode="r:", encoding="utf-8", errors="surrogateescape"
        ) as tf:
            while True:
                meter.budget = _HEADER_BUDGET
                info = tf.next()
                meter.budget = None
                if info is None:
                    break
                sink.begin()
                _tar_member(tf, info, sink)
        while chunk := raw.read(CHUNK):  # padding; also checks the compressed trailer
            sink.account(len(chunk))


def _tar_member(tf: tarfile.TarFile, info: tarfile.TarInfo, sink: _Sink) -> None:
    name = info.name
    if info.isreg():
        src = tf.extractfile(info)
        if src is None:
            raise SandboxRejected(f"corrupt archive: no data for {name}")
        with src:
            sink.add_file(name, src.read, info.mode, info.mtime)
    elif info.isdir():
        sink.add_dir(name, info.mode)
    elif info.issym():
        sink.add_symlink(name, info.linkname)
    elif info.islnk():
        sink.add_hardlink(name, info.linkname)
    elif info.ischr() or info.isblk():
        sink.refuse(name, "device file")
    elif info.isfifo():
        sink.refuse(name, "fifo")
    else:
        sink.refuse(name, f"unsupported member type {info.type!r}")


def _check_zip_directory(archive: Path, limits: UnpackLimits) -> None:
    """Count central-directory entries before zipfile loads them all into memory."""
    with archive.open("rb") as fh:
        size = fh.seek(0, os.SEEK_END)
        tail_len = min(size, 22 + 0xFFFF)
        fh.seek(size - tail_len)
        tail = fh.read(tail_len)
        pos = tail.rfind(b"PK\x05\x06")
        if pos < 0 or tail_len - pos < 22:
            raise SandboxRejected("corrupt archive: zip end of central directory not found")
        (cd_size,) = struct.unpack_from("<L", tail, pos + 12)
        cd_start = size - tail_len + pos - cd_size
        if pos >= 76 and tail[pos - 20 : pos - 16] == b"PK\x06\x07":  # zip64
            (cd_size,) = struct.unpack_from("<Q", tail, pos - 76 + 40)
            cd_start = size - tail_len + pos - 76 - cd_size
        fh.seek(max(cd_start, 0))
        count = done = 0
        while done + 46 <= cd_size:
            header = fh.read(46)
            if len(header) < 46 or not header.startswith(b"PK\x01\x02"):
                return  # zipfile reports the damage
            count += 1
            if count > limits.max_members:
                raise SandboxRejected(f"too many members (> {limits.max_members})")
            name_len, extra_len, comment_len = struct.unpack_from("<HHH", header, 28)
            if name_len > limits.max_name_bytes:
                raise SandboxRejected(f"name too long ({name_len} bytes)")
            fh.seek(name_len + extra_len + comment_len, os.SEEK_CUR)
            done += 46 + name_len + extra_len + comment_len


def _unpack_zip(archive: Path, sink: _Sink) -> None:
    _check_zip_directory(archive, sink.limits)
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            sink.begin()
            _zip_member(zf, info, sink)


def _zip_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, sink: _Sink) -> None:
    name = info.orig_filename  # before zipfile cut it at a NUL
    mode = info.external_attr >> 16 if info.create_system == _ZIP_UNIX else 0
    kind = stat.S_IFMT(mode)
    if info.flag_bits & _ZIP_ENCRYPTED:
        sink.refuse(name, "encrypted member")
    if name.endswith("/") or kind == stat.S_IFDIR:
        sink.add_dir(name, mode or 0o755)
    elif kind == stat.S_IFLNK:
        with zf.open(info) as src:
            target = src.read(sink.limits.max_name_bytes + 1)
        sink.add_symlink(name, target.decode("utf-8", "surrogateescape"))
    elif kind in (0, stat.S_IFREG):
        with zf.open(info) as src:
            sink.add_file(name, src.read, mode or 0o644, None)
    else:
        sink.refuse(name, _SPECIAL.get(kind, f"unsupported member type {kind:o}"))


def safe_unpack(archive: Path, dest: Path, limits: UnpackLimits = UnpackLimits()) -> list[str]:
    """Unpack ``archive`` into ``dest``; return the member names created, in order.

    Raises :class:`SandboxRejected` for anything unsafe or damaged, :class:`DiskFullError`
    when the disk fills up and :class:`SandboxError` for other local failures.
    """
    try:
        fmt = detect_format(archive)
        sink = _Sink(dest, limits)
        try:
            if fmt is ArchiveFormat.ZIP:
                _unpack_zip(archive, sink)
            else:
                _unpack_tar(archive, fmt, sink)
            names = sink.finish()
        except UnicodeDecodeError as exc:  # zipfile: a name flagged UTF-8 that is not
            raise SandboxRejected("undecodable name") from exc
        except _CORRUPT as exc:
            raise SandboxRejected(f"corrupt archive: {exc}") from exc
        finally:
            sink.close()
    except SandboxRejected as exc:
        log.warning("%s (archive %s)", exc, archive.name)
        raise
    log.info("unpacked %s %s: %d members, %d bytes", fmt, archive.name, sink.members, sink.written)
    return names
