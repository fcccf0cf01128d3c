"""Entry points of one group, read straight from the distributions' metadata on sys.path.

``importlib.metadata.entry_points(group=...)`` costs the pilot about 25 ms at every
start (importing it, then building and parsing every distribution's metadata), a tenth
of its way to the first payload. Plugin discovery needs far less: the
``entry_points.txt`` of each ``*.dist-info`` / ``*.egg-info`` directory on ``sys.path``,
the first distribution of a name winning as with importlib.metadata, and the
distribution's ``Name`` only for those that declare the group. Zip files on sys.path are
not searched (plugins are installed as directories, also inside the one-file binary).
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import reduce
from typing import Any

# module[:attr.attr] [extras], as in the entry-point specification
_VALUE_RE = re.compile(r"(?P<module>[\w.]+)\s*(?::\s*(?P<attr>[\w.]+)\s*)?(?:\[.*\]\s*)?$")
_SUFFIXES = (".dist-info", ".egg-info")


@dataclass(frozen=True)
class EntryPoint:
    """One ``name = value`` of a group; ``distribution`` is its project name, if known."""

    name: str
    value: str
    group: str
    distribution: str | None = None

    def load(self) -> Any:  # whatever the entry point names, as importlib.metadata's
        """Import the module and follow the attributes; ValueError on a malformed value."""
        match = _VALUE_RE.match(self.value)
        if match is None:
            raise ValueError(f"malformed entry point value {self.value!r}")
        module = importlib.import_module(match["module"])
        attributes = match["attr"].split(".") if match["attr"] else []
        return reduce(getattr, attributes, module)


def entry_points(group: str, path: Iterable[str] | None = None) -> tuple[EntryPoint, ...]:
    """Every entry point of ``group`` on ``path`` (default sys.path), in path order."""
    found: list[EntryPoint] = []
    seen: set[str] = set()
    for info in _metadata_dirs(sys.path if path is None else path):
        key = _normalise(os.path.basename(info).rsplit(".", 1)[0].split("-", 1)[0])
        if key in seen:
            continue  # an earlier sys.path entry holds this distribution: it wins
        seen.add(key)
        text = _read(os.path.join(info, "entry_points.txt"))
        if text is None or f"[{group}]" not in text:
            continue
        distribution = _project_name(info)
        found.extend(
            EntryPoint(name, value, group, distribution) for name, value in _section(text, group)
        )
    return tuple(found)


def _metadata_dirs(path: Iterable[str]) -> Iterator[str]:
    for entry in path:
        try:
            names = sorted(os.listdir(entry or "."))
        except OSError:  # missing, a file, a zip: nothing installed there as a directory
            continue
        for name in names:
            if name.endswith(_SUFFIXES):
                yield os.path.join(entry or ".", name)


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as file:
            return file.read()
    except (OSError, UnicodeDecodeError):
        return None


def _project_name(info: str) -> str | None:
    for filename in ("METADATA", "PKG-INFO"):
        text = _read(os.path.join(info, filename))
        if text is None:
            continue
        for line in text.splitlines():
            if not line.strip():
                break  # end of the headers
            key, sep, value = line.partition(":")
            if sep and key.strip().lower() == "name":
                return value.strip()
    return None


def _section(text: str, group: str) -> Iterator[tuple[str, str]]:
    """The ``name = value`` lines of section ``[group]`` of an entry_points.txt."""
    inside = False
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            inside = line[1:-1] == group
        elif inside:
            name, sep, value = line.partition("=")
            if sep:
                yield name.strip(), value.strip()
