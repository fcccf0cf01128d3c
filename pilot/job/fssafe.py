"""File-system safety shared by unpacking (:mod:`.archive`) and packing (:mod:`.outpack`).

Open flags that never follow a link, the text rules for names (no control characters,
valid UTF-8), the kinds of tree entry, and a lexical resolver that tells whether a set
of symlinks stays inside its tree, as the kernel would resolve them.
"""

from __future__ import annotations

import os
from enum import Enum
from typing import Final

from pilot.errors import SandboxError

MAX_LINK_FOLLOWS: Final = 40
DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
NEW_FILE: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
READ_FILE: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class SandboxRejected(SandboxError):
    """The input sandbox is unsafe or malformed; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"Input sandbox rejected: {reason}")
        self.reason = reason


def check_text(text: str, what: str = "name") -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise SandboxRejected(f"undecodable {what}: {text!a}") from None
    if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in text):
        raise SandboxRejected(f"control character in {what}: {text!a}")


class Escapes(Exception):
    """A symlink target leaves the tree (or loops)."""


class LinkMap:
    """The symlinks of one tree, resolved lexically the way the kernel would."""

    def __init__(self) -> None:
        self.targets: dict[tuple[str, ...], str] = {}
        self._follows = 0

    def check(self, link: tuple[str, ...]) -> None:
        """Raise :class:`Escapes` unless ``link`` resolves inside the tree."""
        self._follows = 0
        self._resolve(link[:-1], self.targets[link])

    def _resolve(self, base: tuple[str, ...], target: str) -> tuple[str, ...]:
        if target.startswith("/"):
            raise Escapes("link escapes job directory")
        stack = list(base)
        for part in target.split("/"):
            if part in ("", "."):
                continue
            if part == "..":
                if not stack:
                    raise Escapes("link escapes job directory")
                stack.pop()
                continue
            stack.append(part)
            nested = self.targets.get(tuple(stack))
            if nested is not None:
                self._follows += 1
                if self._follows > MAX_LINK_FOLLOWS:
                    raise Escapes("symlink loop")
                stack = list(self._resolve(tuple(stack[:-1]), nested))
        return tuple(stack)


class Kind(Enum):
    DIR = "dir"
    FILE = "file"
    LINK = "link"
