"""Probe one CVMFS repository: open it, list it, read its revision.

Run as a standalone script (``python -I _cvmfs_probe.py PATH``) by the ``cvmfs`` check,
because on a stuck FUSE mount the first ``open`` blocks in the kernel: only a separate
process can be given up on (and killed) cleanly. Prints one JSON object. It must import
nothing from the project.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from typing import Any

REVISION_XATTR = "user.revision"


def probe(path: str) -> dict[str, Any]:
    """``{"ok": bool, "entries": int, "revision": int | None, "error": str}`` for ``path``."""
    try:
        fd = os.open(path, os.O_RDONLY)  # blocks on a stuck mount (and on a FIFO)
    except FileNotFoundError:
        return {"ok": False, "error": "not mounted (no such directory)"}
    except OSError as exc:
        return {"ok": False, "error": f"cannot open: {exc.strerror or exc}"}
    try:
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            return {"ok": False, "error": "not a directory"}
        entries = len(os.listdir(fd))
    except OSError as exc:
        return {"ok": False, "error": f"cannot list: {exc.strerror or exc}"}
    finally:
        os.close(fd)
    if entries == 0:
        return {"ok": False, "error": "empty directory (not mounted?)"}
    return {"ok": True, "entries": entries, "revision": _revision(path)}


def _revision(path: str) -> int | None:
    try:
        raw = os.getxattr(path, REVISION_XATTR)
    except OSError:  # ENODATA / ENOTSUP: not a CVMFS mount, or no such attribute
        return None
    text = raw.decode("ascii", "replace").strip().rstrip("\x00")
    return int(text) if text.isdigit() else None


def main(argv: list[str]) -> None:
    sys.stdout.write(json.dumps(probe(argv[0])) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
