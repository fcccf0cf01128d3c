"""What ``pilot`` and ``pilot-stub`` share on the command line: one-line usage errors,
help with defaults, aligned tables, quiet ends on a closed pipe, server URL checks."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TextIO
from urllib.parse import urlsplit

from pilot.errors import ExitCode, UsageError


class Parser(argparse.ArgumentParser):
    """An argument parser whose mistakes are one line: what is wrong and where to look."""

    def error(self, message: str) -> NoReturn:
        self.exit(int(ExitCode.USAGE), f"{self.prog}: {message} (see {self.prog} --help)\n")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the epilog's layout and gives option lists room to breathe."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=34, width=100)


def exit_codes_epilog() -> str:
    return "exit codes:\n" + "\n".join(f"  {c.value:>3}  {c.name}" for c in ExitCode)


def check_server_url(url: str, where: str, schemes: Sequence[str] = ("http", "https")) -> str:
    """A usable server URL or a UsageError naming ``where`` (flag, variable or file)."""
    text = url.strip()
    shown = " or ".join(f"{s}://HOST:PORT" for s in schemes)
    try:
        parts = urlsplit(text)
    except ValueError:  # an unclosed [IPv6 address
        parts = urlsplit("")
    if parts.scheme not in schemes or not parts.hostname:
        raise UsageError(f"{where} {url!r}: not a server URL; expected {shown}")
    try:
        port = parts.port  # raises when not a number or out of range
    except ValueError:
        port = 0
    if port == 0:
        raise UsageError(f"{where} {url!r}: the port is not a number in 1..65535")
    return text.rstrip("/")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], right: Sequence[int] = ()) -> str:
    """Rows as aligned columns under a header; ``right`` lists right-aligned columns."""
    cells = [[shown(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = []
    for row in [list(headers), *cells]:
        parts = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def shown(value: Any) -> str:
    """A value as a user writes it: ``a, b`` for lists, ``-`` for nothing."""
    if value is None or value == "":
        return "-"
    if isinstance(value, (list, tuple)):
        return ", ".join(shown(v) for v in value) or "-"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def guarded(main: Callable[[], int]) -> int:
    """``main()``, ending quietly when whoever reads our output goes away (``| head``)."""
    try:
        code = main()
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        _silence_stdout()
        return int(ExitCode.OK)


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace | int:
    """The parsed arguments, or the exit code when argparse already answered (``--help``,
    ``--version``, or a usage error it printed)."""
    try:
        return parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else int(ExitCode.USAGE)


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's last flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


class TerminalProgress:
    """A progress line for transfers of a few MB or more, redrawn in place on a terminal
    (at most every ``interval`` s); nothing at all when ``stream`` is not a terminal."""

    MIN_BYTES = 4 << 20

    def __init__(self, stream: TextIO, interval: float = 0.2) -> None:
        self.stream = stream
        self.interval = interval
        self.shown = 0.0
        self.drawn = False

    def __call__(self, what: str, done: int, total: int, finished: bool) -> None:
        if max(done, total) < self.MIN_BYTES or not self.stream.isatty():
            return
        now = time.monotonic()
        if not finished and now - self.shown < self.interval:
            return
        self.shown = now
        percent = f" {100 * done / total:3.0f} %" if total else ""
        of = f" of {total / 2**20:.1f}" if total else ""
        line = f"{what}: {done / 2**20:.1f}{of} MiB{percent}"
        self.stream.write("\r" + line.ljust(60) + ("\n" if finished else ""))
        self.stream.flush()
        self.drawn = not finished

    def end_line(self) -> None:
        """End a line left unfinished (a transfer that failed), so that what is said
        next starts a line of its own."""
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()
            self.drawn = False
