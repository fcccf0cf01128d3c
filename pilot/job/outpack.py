"""Packing the output sandbox and the submitter's input files, as tar.gz.

Only what stays inside the job directory is packed: links are never followed and are
kept only when they point inside the packed tree; names that :func:`pilot.job.archive.
safe_unpack` would refuse are skipped. Over the size limit, the priority files
(StdOut, StdErr) go first and the rest is dropped, and the result says so.
"""

from __future__ import annotations

import gzip
import logging
import os
import stat
import tarfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

from pilot.errors import DiskFullError, SandboxError, is_disk_full
from pilot.job.fssafe import (
    DIR_FLAGS,
    READ_FILE,
    Escapes,
    Kind,
    LinkMap,
    SandboxRejected,
    check_text,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PackResult:
    """What :func:`pack_output` packed. ``size`` is the sum of the packed file sizes
    (uncompressed, the quantity ``max_bytes`` bounds); ``skipped`` lists links leaving
    the packed tree, names :func:`safe_unpack` would refuse, and entries that vanished."""

    included: tuple[str, ...]
    missing: tuple[str, ...]
    dropped: tuple[str, ...]
    size: int
    skipped: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Node:
    kind: Kind
    size: int = 0
    target: str = ""


def _scan(job_dir: Path) -> dict[tuple[str, ...], _Node]:
    """Everything under ``job_dir``; symlinks are listed, never followed."""
    nodes: dict[tuple[str, ...], _Node] = {}
    pending: list[tuple[str, ...]] = [()]
    while pending:
        rel = pending.pop()
        try:
            with os.scandir(job_dir.joinpath(*rel)) as entries:
                for entry in entries:
                    parts = (*rel, entry.name)
                    if entry.is_symlink():
                        nodes[parts] = _Node(Kind.LINK, target=os.readlink(entry.path))
                    elif entry.is_dir(follow_symlinks=False):
                        nodes[parts] = _Node(Kind.DIR)
                        pending.append(parts)
                    elif entry.is_file(follow_symlinks=False):
                        size = entry.stat(follow_symlinks=False).st_size
                        nodes[parts] = _Node(Kind.FILE, size)
        except OSError as exc:
            log.warning("output sandbox: cannot list %s: %s", "/".join(rel) or ".", exc)
    return nodes


def _pattern_parts(pattern: str) -> tuple[str, ...] | None:
    if not pattern or pattern.startswith("/") or "\0" in pattern:
        return None
    parts = tuple(p for p in pattern.split("/") if p not in ("", "."))
    return None if not parts or ".." in parts else parts


def _glob_match(pattern: tuple[str, ...], path: tuple[str, ...]) -> bool:
    """Shell-glob match per component; ``**`` spans directories; dot files need a dot."""
    if not pattern:
        return not path
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        return any(
            _glob_match(rest, path[i:])
            for i in range(len(path) + 1)
            if not any(p.startswith(".") for p in path[:i])
        )
    if not path or (path[0].startswith(".") and not head.startswith(".")):
        return False
    return fnmatchcase(path[0], head) and _glob_match(rest, path[1:])


def _select(
    nodes: dict[tuple[str, ...], _Node], patterns: Sequence[str]
) -> tuple[dict[tuple[str, ...], int], list[str]]:
    """Files and links matched by ``patterns`` (directories expanded), each with the depth
    of the node that matched (itself, or the directory above it), and the misses."""
    chosen: dict[tuple[str, ...], int] = {}
    missing: list[str] = []
    ordered = sorted(p for p, node in nodes.items() if node.kind is not Kind.DIR)
    for pattern in patterns:
        pat = _pattern_parts(pattern)
        hits = {p for p in nodes if pat is not None and _glob_match(pat, p)}
        if not hits:
            missing.append(pattern)
            continue
        for parts in ordered:  # a node is in when it, or a directory above it, matched
            depth = next((i for i in range(1, len(parts) + 1) if parts[:i] in hits), None)
            if depth is not None and parts not in chosen:
                chosen[parts] = depth
    return chosen, missing


def _flat_names(
    nodes: dict[tuple[str, ...], _Node], chosen: dict[tuple[str, ...], int]
) -> tuple[dict[tuple[str, ...], tuple[str, ...]], list[str]]:
    """DIRAC's JobWrapper packing: a matched file under its base name, a matched directory
    under its own name. Links are left out (DIRAC would pack their targets' bytes), and
    of two files with the same name the first is kept."""
    names: dict[tuple[str, ...], tuple[str, ...]] = {}
    taken: set[tuple[str, ...]] = set()
    skipped: list[str] = []
    for parts, depth in chosen.items():
        name = parts[depth - 1 :]
        if nodes[parts].kind is Kind.LINK or name in taken:
            skipped.append("/".join(parts))
            continue
        names[parts] = name
        taken.add(name)
    return names, skipped


def _links_inside(
    nodes: dict[tuple[str, ...], _Node], chosen: list[tuple[str, ...]]
) -> set[tuple[str, ...]]:
    """The chosen links that stay inside the packed tree (iterated to a fixed point)."""
    links = LinkMap()
    links.targets = {p: nodes[p].target for p in chosen if nodes[p].kind is Kind.LINK}
    while True:
        escaping: set[tuple[str, ...]] = set()
        for parts in links.targets:
            try:
                links.check(parts)
            except Escapes:
                escaping.add(parts)
        if not escaping:
            return set(links.targets)
        for parts in escaping:
            del links.targets[parts]


def _rank(priority: Sequence[str]) -> Callable[[tuple[str, ...]], int]:
    def rank(parts: tuple[str, ...]) -> int:
        rel = "/".join(parts)
        for i, pat in enumerate(priority):
            if fnmatchcase(rel, pat) or fnmatchcase(parts[-1], pat):
                return i
        return len(priority)

    return rank


class _FixedReader:
    """Exactly ``size`` bytes of an open file: cut if it grew, zero-padded if it shrank."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.left = size

    def read(self, size: int = -1, /) -> bytes:
        want = self.left if size < 0 else min(size, self.left)
        data = bytearray()
        while len(data) < want and (piece := os.read(self.fd, want - len(data))):
            data += piece
        data += bytes(want - len(data))
        self.left -= want
        return bytes(data)


def _open_beneath(root: int, parts: tuple[str, ...]) -> int:
    """Open ``parts`` under the directory fd ``root`` without following any link."""
    fd = os.dup(root)
    try:
        for part in parts[:-1]:
            nxt = os.open(part, DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nxt
        return os.open(parts[-1], READ_FILE, dir_fd=fd)
    finally:
        os.close(fd)


def _add_node(
    tf: tarfile.TarFile,
    root: int,
    parts: tuple[str, ...],
    node: _Node,
    name: tuple[str, ...] | None = None,
) -> bool:
    info = tarfile.TarInfo("/".join(name or parts))
    info.mtime = int(time.time())
    if node.kind is Kind.LINK:
        info.type, info.linkname, info.mode = tarfile.SYMTYPE, node.target, 0o777
        tf.addfile(info)
        return True
    try:
        fd = _open_beneath(root, parts)
    except OSError as exc:
        log.warning("output sandbox: skipping %s: %s", info.name, exc.strerror)
        return False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            log.warning("output sandbox: skipping %s: no longer a regular file", info.name)
            return False
        info.size, info.mode, info.mtime = node.size, st.st_mode & 0o755, int(st.st_mtime)
        tf.addfile(info, _FixedReader(fd, node.size))
        return True
    finally:
        os.close(fd)


@contextmanager
def _tar_gz(out: Path) -> Iterator[tarfile.TarFile]:
    """A gzip-compressed tar at ``out``, written to a side file and renamed when done.

    The gzip header carries no time stamp and no file name, so that the same members
    make the same bytes (and the same sha256: the stub stores them once)."""
    part = out.with_name(out.name + ".part")
    try:
        with (
            part.open("wb") as raw,
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=6, mtime=0) as gz,
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tf,
        ):
            yield tf
        os.replace(part, out)
    except OSError as exc:
        error = DiskFullError if is_disk_full(exc) else SandboxError
        raise error(f"cannot write sandbox archive {out}: {exc.strerror or exc}") from exc
    finally:
        part.unlink(missing_ok=True)


def _portable(name: str, node: _Node) -> bool:
    """Whether :func:`safe_unpack` would accept this name (and link target)."""
    try:
        check_text(name)
        check_text(node.target or "x")
    except SandboxRejected:
        return False
    return True


def _fit(
    nodes: dict[tuple[str, ...], _Node],
    chosen: list[tuple[str, ...]],
    max_bytes: int,
    priority: Sequence[str],
) -> tuple[list[tuple[str, ...]], list[str], list[str]]:
    """Split ``chosen`` into kept, dropped (over ``max_bytes``) and skipped names."""
    safe_links = _links_inside(nodes, chosen)
    kept: list[tuple[str, ...]] = []
    dropped: list[str] = []
    skipped: list[str] = []
    size = 0
    for parts in sorted(chosen, key=_rank(priority)):
        node, name = nodes[parts], "/".join(parts)
        if not _portable(name, node) or (node.kind is Kind.LINK and parts not in safe_links):
            skipped.append(name)
        elif size + node.size > max_bytes:
            dropped.append(name)
        else:
            kept.append(parts)
            size += node.size
    return kept, dropped, skipped


def _write_output(
    job_dir: Path,
    out: Path,
    kept: list[tuple[str, ...]],
    nodes: dict[tuple[str, ...], _Node],
    names: Mapping[tuple[str, ...], tuple[str, ...]],
) -> list[tuple[str, ...]]:
    """Write ``kept`` to ``out`` (under ``names`` where given); return what was packed."""
    with _tar_gz(out) as tf:
        root = os.open(job_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            return [
                parts
                for parts in kept
                if _add_node(tf, root, parts, nodes[parts], names.get(parts))
            ]
        finally:
            os.close(root)


def pack_output(
    job_dir: Path,
    patterns: Sequence[str],
    out: Path,
    *,
    max_bytes: int,
    priority: Sequence[str] = (),
    flatten: bool = False,
) -> PackResult:
    """Pack what ``patterns`` match under ``job_dir`` into the tar.gz ``out``.

    Patterns are globs relative to ``job_dir`` (``**`` spans directories; absolute
    patterns and ``..`` match nothing); a matched directory is packed recursively.
    Symlinks are packed as links, and only when they resolve inside the packed tree;
    names :func:`safe_unpack` would refuse are skipped. If the files exceed ``max_bytes``
    (uncompressed), files are kept in ``priority`` order, then in pattern order, and
    the rest are dropped. With ``flatten`` (DIRAC's rule), a file a pattern matched is
    packed under its base name and a matched directory under its own name
    (``res/digest-*.txt`` -> ``digest-p1.txt``); links are then left out.
    """
    nodes = _scan(job_dir)
    with suppress(ValueError):  # never pack the archive into itself
        own = out.resolve().relative_to(job_dir.resolve()).parts
        for name in (own[-1], own[-1] + ".part"):
            nodes.pop((*own[:-1], name), None)
    selected, missing = _select(nodes, patterns)
    names: dict[tuple[str, ...], tuple[str, ...]] = {}
    unflattened: list[str] = []
    if flatten:
        names, unflattened = _flat_names(nodes, selected)
    chosen = [p for p in selected if not flatten or p in names]
    kept, dropped, skipped = _fit(nodes, chosen, max_bytes, priority)
    skipped = unflattened + skipped
    written = _write_output(job_dir, out, kept, nodes, names)
    done = set(written)
    skipped += ["/".join(parts) for parts in kept if parts not in done]
    result = PackResult(
        included=tuple("/".join(names.get(parts, parts)) for parts in written),
        missing=tuple(missing),
        dropped=tuple(dropped),
        size=sum(nodes[parts].size for parts in written),
        skipped=tuple(skipped),
    )
    log.info("output sandbox %s: %d entries, %d bytes", out.name, len(written), result.size)
    for what, which in (("no match", missing), ("over size limit", dropped), ("skipped", skipped)):
        if which:
            log.warning("output sandbox: %s: %s", what, ", ".join(which))
    return result


# Time stamp of every member of a submitted input sandbox (1980-01-01, the oldest a zip
# file can hold): the archive depends on the files' contents, names and modes only.
FIXED_MTIME = 315532800
PROGRESS_FROM_BYTES = 4 << 20  # packing more than this is said before it starts


def _scrub(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode &= 0o755
    info.mtime = FIXED_MTIME
    return info


def pack_files(files: Sequence[tuple[Path, str]], out: Path) -> None:
    """Pack local files (or directories, recursively) into the tar.gz ``out``.

    Each path is stored under its ``arcname``; a symlinked path is packed as what it
    points to. The archive is deterministic: members sorted by name, owner, group and
    time stamp fixed, no time in the gzip header; the same files make the same bytes.
    """
    names: dict[str, Path] = {}
    for path, arcname in files:
        parts = _pattern_parts(arcname)
        name = "/".join(parts or ())
        if parts is None or name in names or not _portable(name, _Node(Kind.FILE)):
            raise SandboxError(f"invalid or duplicate name in input sandbox: {arcname!r}")
        if not path.exists():
            raise SandboxError(f"input sandbox file not found: {path}")
        names[name] = path.resolve()
    size = sum(p.stat().st_size for p in names.values() if p.is_file())
    if size >= PROGRESS_FROM_BYTES:
        log.info("packing %d input file(s), %.0f MiB, into %s", len(names), size / 2**20, out.name)
    with _tar_gz(out) as tf:
        for name, path in sorted(names.items()):  # directories are walked in sorted order too
            tf.add(path, arcname=name, filter=_scrub)
    log.info("packed %d input files into %s", len(names), out.name)
