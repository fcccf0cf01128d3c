"""Which glibc symbol versions an ELF file needs: its ``.gnu.version_r`` section, parsed.

The dynamic loader refuses to start a program (or load a library) when one of the
versions listed there is missing from the system's glibc, so the highest ``GLIBC_x.y``
over the bootloader and every bundled library is the lowest glibc the binary runs on.
``objdump -T`` shows the same versions per symbol; reading the section directly needs
no binutils on the machine. Standard library only: the PyInstaller spec imports this
inside the bullseye build tree too.

    python build/elfcheck.py FILE...      # prints each file's highest GLIBC version
"""

from __future__ import annotations

import re
import struct
import sys
from collections.abc import Iterable
from pathlib import Path

ELF_MAGIC = b"\x7fELF"
SHT_GNU_VERNEED = 0x6FFFFFFE
_GLIBC = re.compile(r"^GLIBC_(\d+)\.(\d+)(?:\.(\d+))?$")

Version = tuple[int, ...]


def is_elf(data: bytes) -> bool:
    return data[:4] == ELF_MAGIC


def needed_versions(data: bytes) -> set[tuple[str, str]]:
    """``{(library, version)}`` from the ELF image ``data`` (64-bit little-endian only).

    A file without the section (static, or needing no versions) gives an empty set.
    """
    if not is_elf(data) or data[4] != 2 or data[5] != 1:
        raise ValueError("not a 64-bit little-endian ELF file")
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [
        struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)
    ]
    found: set[tuple[str, str]] = set()
    for _name, kind, _flags, _addr, offset, _size, link, info, _align, _entsize in sections:
        if kind != SHT_GNU_VERNEED:
            continue
        strtab = sections[link][4]
        found |= _walk_verneed(data, offset, info, strtab)
    return found


def _cstr(data: bytes, offset: int) -> str:
    return data[offset : data.index(b"\0", offset)].decode("ascii", "replace")


def _walk_verneed(data: bytes, offset: int, count: int, strtab: int) -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    for _ in range(count):
        _version, aux_count, file_off, aux_off, next_off = struct.unpack_from(
            "<HHIII", data, offset
        )
        library = _cstr(data, strtab + file_off)
        aux = offset + aux_off
        for _ in range(aux_count):
            _hash, _flags, _other, name_off, aux_next = struct.unpack_from("<IHHII", data, aux)
            found.add((library, _cstr(data, strtab + name_off)))
            aux += aux_next
        if not next_off:
            break
        offset += next_off
    return found


def glibc_versions(versions: Iterable[tuple[str, str]]) -> list[Version]:
    """The GLIBC_x.y versions among ``versions``, as sortable tuples."""
    out = []
    for _library, name in versions:
        match = _GLIBC.match(name)
        if match:
            out.append(tuple(int(part) for part in match.groups() if part is not None))
    return out


def glibc_floor(data: bytes) -> Version | None:
    """The highest GLIBC version ``data`` needs, or None if it needs none."""
    versions = glibc_versions(needed_versions(data))
    return max(versions) if versions else None


def format_version(version: Version | None) -> str:
    return "none" if version is None else ".".join(map(str, version))


def floor_of_files(paths: Iterable[Path]) -> tuple[Version | None, dict[str, Version]]:
    """Highest GLIBC version over the ELF files in ``paths``, and each file's own."""
    per_file: dict[str, Version] = {}
    for path in paths:
        data = path.read_bytes()
        if not is_elf(data):
            continue
        floor = glibc_floor(data)
        if floor is not None:
            per_file[str(path)] = floor
    return (max(per_file.values()) if per_file else None), per_file


def main(argv: list[str]) -> int:
    overall, per_file = floor_of_files(Path(arg) for arg in argv)
    for name, version in sorted(per_file.items(), key=lambda item: item[1]):
        print(f"{format_version(version):>6}  {name}")
    print(f"floor: GLIBC {format_version(overall)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
