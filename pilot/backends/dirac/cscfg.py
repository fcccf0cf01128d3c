"""DIRAC's configuration (the CS), read from its Configuration Server over DISET.

``Configuration/Server.getCompressedData`` answers the whole configuration as zlib-compressed
text in DIRAC's CFG format::

    Registry
    {
      Users
      {
        alice
        {
          DN = /O=Example/CN=Alice
        }
      }
    }

Sections are a name on one line and ``{`` ... ``}``; options are ``name = value`` (``+=``
appends with a comma); ``#`` starts a comment line. The pilot reads only what it needs from
it: a user's DN (to ask the ProxyManager for that user's proxy) and storage element
definitions (where to read and write data).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

MAX_CONFIG_BYTES = 64 << 20


class CfgError(ValueError):
    """Text that is not DIRAC CFG."""


@dataclass
class Section:
    options: dict[str, str] = field(default_factory=dict)
    sections: dict[str, Section] = field(default_factory=dict)

    def find(self, path: str) -> Section | None:
        here: Section | None = self
        for part in (p for p in path.split("/") if p):
            here = here.sections.get(part) if here is not None else None
        return here

    def get(self, path: str, default: str | None = None) -> str | None:
        head, _, name = path.rstrip("/").rpartition("/")
        section = self.find(head)
        if section is None:
            return default
        return section.options.get(name, default)


def parse(text: str) -> Section:
    root = Section()
    stack = [root]
    pending: str | None = None  # a name waiting for its "{"
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line == "{" or line.endswith("{"):
            name = line[:-1].strip() or pending
            if not name:
                raise CfgError(f"line {number}: '{{' without a section name")
            child = stack[-1].sections.setdefault(name, Section())
            stack.append(child)
            pending = None
            continue
        if pending is not None:
            raise CfgError(f"line {number}: section {pending!r} has no '{{'")
        if line == "}":
            if len(stack) == 1:
                raise CfgError(f"line {number}: '}}' closes nothing")
            stack.pop()
            continue
        if "+=" in line and line.index("+=") < line.find("=") + 1:
            name, value = (p.strip() for p in line.split("+=", 1))
            old = stack[-1].options.get(name)
            stack[-1].options[name] = f"{old}, {value}" if old else value
        elif "=" in line:
            name, value = (p.strip() for p in line.split("=", 1))
            stack[-1].options[name] = value
        else:
            pending = line
    if len(stack) != 1 or pending is not None:
        raise CfgError("unterminated section at the end")
    return root


def from_compressed(data: Any) -> Section:
    """The reply of ``getCompressedData`` (bytes; a str on older servers) parsed."""
    try:
        raw = data.encode("latin-1") if isinstance(data, str) else None
    except UnicodeEncodeError:
        raw = None  # not bytes carried in a str
    if isinstance(data, bytes | bytearray):
        raw = bytes(data)
    if raw is None:  # bytes(n) of an int would allocate n bytes
        raise CfgError(f"configuration data is not compressed bytes: {data!r:.40}")
    try:
        decompressor = zlib.decompressobj()
        text = decompressor.decompress(raw, MAX_CONFIG_BYTES)
    except zlib.error as exc:
        raise CfgError(f"configuration data is not zlib-compressed: {exc}") from None
    if decompressor.unconsumed_tail:
        raise CfgError(f"configuration data over {MAX_CONFIG_BYTES >> 20} MiB")
    return parse(text.decode("utf-8", errors="replace"))


def user_dn(cfg: Section, username: str) -> str | None:
    """The DN of a DIRAC user (the first one when several are listed)."""
    value = cfg.get(f"/Registry/Users/{username}/DN")
    return value.split(",")[0].strip() if value else None


def as_list(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def options(section: Section | None) -> Mapping[str, str]:
    return dict(section.options) if section is not None else {}
