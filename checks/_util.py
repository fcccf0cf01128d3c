"""Helpers shared by the built-in checks: typed options, file reads, helper processes."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pilot.api import CheckContext, CommandResult

T = TypeVar("T")

log = logging.getLogger(__name__)

# Seconds kept back from a check's time budget so that its helper processes are killed
# (and their results turned into a message) before the runner gives up on the check.
MARGIN = 0.25


def _bad(check: str, key: str, expected: str, value: Any) -> ValueError:
    return ValueError(f"option checks.{check}.{key}: expected {expected}, got {value!r}")


def option_float(ctx: CheckContext, check: str, key: str, default: float) -> float:
    value = ctx.option(check, key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise _bad(check, key, "a non-negative number", value)
    return float(value)


def option_int(ctx: CheckContext, check: str, key: str, default: int) -> int:
    value = ctx.option(check, key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _bad(check, key, "a non-negative integer", value)
    return value


def option_bool(ctx: CheckContext, check: str, key: str, default: bool) -> bool:
    value = ctx.option(check, key, default)
    if not isinstance(value, bool):
        raise _bad(check, key, "true or false", value)
    return value


def option_str(ctx: CheckContext, check: str, key: str, default: str) -> str:
    value = ctx.option(check, key, default)
    if not isinstance(value, str) or not value:
        raise _bad(check, key, "a non-empty string", value)
    return value


def option_path(ctx: CheckContext, check: str, key: str, default: str) -> Path:
    return Path(option_str(ctx, check, key, default))


def option_str_list(ctx: CheckContext, check: str, key: str) -> tuple[str, ...]:
    value = ctx.option(check, key, [])
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise _bad(check, key, "a list of strings", value)
    if not all(isinstance(item, str) and item for item in value):
        raise _bad(check, key, "a list of non-empty strings", value)
    return tuple(value)


def read_text(path: Path) -> str | None:
    """The file's text, or None if it cannot be read."""
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def describe_failure(result: CommandResult) -> str:
    """One line saying why a helper command failed: timeout, last stderr line, exit code."""
    if result.timed_out:
        return f"timed out after {result.duration:.1f} s"
    lines = result.stderr.strip().splitlines()
    return lines[-1].strip() if lines else f"exit code {result.returncode}"


def budget(ctx: CheckContext, wanted: float) -> float:
    """Seconds a helper may take: ``wanted``, cut to fit in the check's own timeout."""
    if ctx.timeout is None:
        return wanted
    return max(0.1, min(wanted, ctx.timeout - MARGIN))


HELPER_FLAG = "--pilot-helper"  # how the one-file pilot runs a helper script in itself


def python_script(script: Path) -> list[str] | None:
    """Argv running a standalone helper script in a separate process, or None if we cannot.

    In a frozen single-file pilot ``sys.executable`` is the pilot itself: it runs the
    helper when called as ``pilot --pilot-helper NAME ...`` (see build/entry.py).
    """
    if getattr(sys, "frozen", False):
        return [sys.executable, HELPER_FLAG, script.stem]
    if script.suffix != ".py" or not script.is_file():
        return None
    return [sys.executable, "-I", str(script)]


def run_parallel(jobs: Sequence[Callable[[], T]], timeout: float) -> list[T | None]:
    """Run ``jobs`` in daemon threads; None for a job that raised or was not done in time.

    A job that hangs (a read blocked in the kernel) is abandoned, never joined, and
    cannot hold up interpreter exit because its thread is a daemon.
    """
    results: list[T | None] = [None] * len(jobs)
    done = [threading.Event() for _ in jobs]

    def worker(index: int) -> None:
        try:
            results[index] = jobs[index]()
        except Exception:
            log.debug("check helper %d raised", index, exc_info=True)
        finally:
            done[index].set()

    for index in range(len(jobs)):
        threading.Thread(target=worker, args=(index,), daemon=True, name="check-helper").start()
    deadline = time.monotonic() + timeout
    for event in done:
        event.wait(max(0.0, deadline - time.monotonic()))
    return [result if event.is_set() else None for result, event in zip(results, done, strict=True)]
