"""Content-addressed sandbox store on disk: ``<root>/<sha256[:2]>/<sha256>``.

Uploads stream to a temporary file while hashing; a body whose hash differs from the
name it was PUT under, or that exceeds the size limit, is refused and nothing is kept.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import BinaryIO

from server_stub.store import StoreError

CHUNK = 1 << 20
_SHA = re.compile(r"^[0-9a-f]{64}$")


class SandboxStore:
    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        root.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        if not _SHA.match(sha256):
            raise StoreError(f"not a sha256 hex digest: {sha256[:80]!r}")
        return self.root / sha256[:2] / sha256

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def put(self, sha256: str, body: BinaryIO, length: int | None) -> int:
        """Store ``body`` under ``sha256``; returns its size."""
        target = self.path(sha256)
        if length is not None and length > self.max_bytes:
            raise StoreError(
                f"sandbox of {length} bytes exceeds the limit of {self.max_bytes}", 413
            )
        target.parent.mkdir(exist_ok=True)
        digest = hashlib.sha256()
        size = 0
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as out:
                size = _copy(body, out, digest, length, self.max_bytes)
            if digest.hexdigest() != sha256:
                raise StoreError(f"body has sha256 {digest.hexdigest()}, not {sha256}")
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return size

    def open(self, sha256: str) -> tuple[BinaryIO, int]:
        path = self.path(sha256)
        try:
            fh = path.open("rb")
        except FileNotFoundError:
            raise StoreError(f"no sandbox {sha256}", 404) from None
        return fh, os.fstat(fh.fileno()).st_size


def _copy(
    body: BinaryIO, out: BinaryIO, digest: hashlib._Hash, length: int | None, limit: int
) -> int:
    size = 0
    while length is None or size < length:
        want = CHUNK if length is None else min(CHUNK, length - size)
        chunk = body.read(want)
        if not chunk:
            break
        size += len(chunk)
        if size > limit:
            raise StoreError(f"sandbox exceeds the limit of {limit} bytes", 413)
        digest.update(chunk)
        out.write(chunk)
    if length is not None and size != length:
        raise StoreError(f"body ended after {size} of {length} bytes")
    return size
