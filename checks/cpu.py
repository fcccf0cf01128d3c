"""``cpu``: usable cores, model, flags, x86-64 level, and a DB12-style power benchmark.

Options (``[checks.cpu]``): ``cpuinfo`` (path, default /proc/cpuinfo), ``benchmark``
(bool, default true), ``benchmark_seconds`` (CPU seconds per copy, default 0.4),
``benchmark_max_copies`` (default 8).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from checks import _db12
from checks._util import (
    budget,
    describe_failure,
    option_bool,
    option_float,
    option_int,
    option_path,
    python_script,
    read_text,
)
from pilot.api import CheckContext, CheckOutcome, Status, run_command

log = logging.getLogger(__name__)

NAME = "cpu"

# Flags (as /proc/cpuinfo spells them) of each x86-64 microarchitecture level; a level
# holds when its flags and those of every lower level are present.
LEVELS: tuple[tuple[str, frozenset[str]], ...] = (
    ("x86-64-v1", frozenset({"lm", "cmov", "cx8", "fpu", "fxsr", "mmx", "syscall", "sse", "sse2"})),
    ("x86-64-v2", frozenset({"cx16", "lahf_lm", "popcnt", "pni", "sse4_1", "sse4_2", "ssse3"})),
    (
        "x86-64-v3",
        frozenset({"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"}),
    ),
    ("x86-64-v4", frozenset({"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"})),
)
TAGGED_FLAGS = ("avx2", "avx512f")


def parse_cpuinfo(text: str) -> tuple[str | None, frozenset[str]]:
    """(model name, flags) of the first processor described in /proc/cpuinfo text."""
    model: str | None = None
    flags: frozenset[str] = frozenset()
    for line in text.splitlines():
        if not line.strip():
            if model is not None or flags:
                break  # end of the first processor's block
            continue
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model", "model") and model is None and value.strip():
            if key != "model" or not value.strip().isdigit():  # x86 "model" is a number
                model = value.strip()
        elif key in ("flags", "features"):
            flags = frozenset(value.split())
    return model, flags


def x86_levels(flags: frozenset[str]) -> tuple[str, ...]:
    """Every x86-64 level the flags satisfy, lowest first (empty if not x86-64)."""
    reached: list[str] = []
    for level, needed in LEVELS:
        if not needed <= flags:
            break
        reached.append(level)
    return tuple(reached)


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class CpuCheck:
    name: str = NAME
    required: bool = False
    timeout: float | None = 10.0
    # the benchmark (~1 s) need not delay the first match: a quick pass without it first
    first_pass_options: Mapping[str, Any] = MappingProxyType({"benchmark": False})

    def run(self, ctx: CheckContext) -> CheckOutcome:
        text = read_text(option_path(ctx, NAME, "cpuinfo", "/proc/cpuinfo")) or ""
        model, flags = parse_cpuinfo(text)
        levels = x86_levels(flags)
        cores = usable_cores()
        facts: dict[str, Any] = {
            "cores": cores,
            "logical_cpus": os.cpu_count(),
            "arch": os.uname().machine,
            "model": model,
            "flags": sorted(flags),
            "microarch": levels[-1] if levels else None,
        }
        tags = [*levels, *(flag for flag in TAGGED_FLAGS if flag in flags)]
        problems: list[str] = []
        if ctx.batch.cores > cores:
            problems.append(f"slot has {ctx.batch.cores} cores but only {cores} are usable")
        if option_bool(ctx, NAME, "benchmark", True):
            bench, error = _benchmark(ctx, min(ctx.batch.cores, cores))
            facts.update(bench)
            if error:
                problems.append(f"benchmark failed: {error}")
        level = facts["microarch"] or "no x86-64 level"
        message = f"{cores} cores, {model or 'unknown model'}, {level}"
        if "benchmark" in facts:
            message += f", DB12 {facts['benchmark']:.1f}"
        if problems:
            return CheckOutcome(Status.WARNING, "; ".join(problems), facts, tuple(tags))
        return CheckOutcome(Status.PASSED, message, facts, tuple(tags))


def _benchmark(ctx: CheckContext, cores: int) -> tuple[Mapping[str, Any], str | None]:
    """Benchmark facts and an error message (None when it worked)."""
    seconds = option_float(ctx, NAME, "benchmark_seconds", 0.4)
    copies = max(1, min(cores, option_int(ctx, NAME, "benchmark_max_copies", 8)))
    argv = python_script(Path(_db12.__file__))
    if argv is None:  # frozen pilot: one copy in this thread (thread CPU time is per thread)
        runs = [_db12.measure(seconds)]
    else:
        result = run_command(
            [*argv, str(copies), str(seconds)], timeout=budget(ctx, 4 * seconds + 5)
        )
        if not result.ok:
            return {}, describe_failure(result)
        runs = [(int(draws), float(cpu)) for draws, cpu in json.loads(result.stdout)]
    try:
        scores = [_db12.score(draws, cpu) for draws, cpu in runs]
    except ValueError as exc:
        return {}, str(exc)
    log.debug("DB12 scores of %d copies: %s", len(scores), scores)
    return {
        "benchmark": round(sum(scores) / len(scores), 3),
        "benchmark_unit": "DB12",
        "benchmark_copies": len(scores),
        "benchmark_scores": [round(score, 3) for score in scores],
    }, None
