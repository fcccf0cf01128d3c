"""A DB12-style CPU power benchmark, time-boxed.

The classic DIRAC benchmark (DB12) times a fixed loop of Gaussian random draws and
reports ``250 / cpu_seconds``, a figure close to HS06 per core. Running the full loop
takes many seconds, so this version runs the same kind of loop for a CPU-time budget,
counts the draws done and scales the result to the classic loop length.

This file is also run as a standalone script (``python -I _db12.py COPIES SECONDS``) by
the ``cpu`` check: it then forks one copy per allocated core and prints one JSON list of
``[draws, cpu_seconds]`` pairs. It must therefore import nothing from the project.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time

CALIBRATION = 250.0  # DB12's normalisation constant
REFERENCE_DRAWS = 12_500_000  # draws in one classic DB12 loop
_CHUNK = 5_000


def _draws(count: int, acc: list[float]) -> None:
    gauss = random.normalvariate
    total, squares = acc
    for _ in range(count):
        value = gauss(10.0, 1.0)
        total += value
        squares += value * value
    acc[0], acc[1] = total, squares


def measure(seconds: float) -> tuple[int, float]:
    """Draw for about ``seconds`` of this thread's CPU time; return (draws, cpu seconds).

    The wall clock also bounds the loop (three times the budget) so that a starved copy
    on an overloaded node still stops; the score uses CPU time only.
    """
    acc = [0.0, 0.0]
    _draws(_CHUNK, acc)  # warm-up, not timed (frequency ramp, caches)
    cpu0, wall0 = time.thread_time(), time.monotonic()
    draws, cpu = 0, 0.0
    while cpu < seconds and time.monotonic() - wall0 < 3 * seconds:
        _draws(_CHUNK, acc)
        draws += _CHUNK
        cpu = time.thread_time() - cpu0
    return draws, cpu


def score(draws: int, cpu: float) -> float:
    """DB12 score (HS06-like units per core) for ``draws`` draws in ``cpu`` CPU seconds."""
    if draws <= 0 or cpu <= 0:
        raise ValueError("nothing measured")
    return CALIBRATION * draws / (REFERENCE_DRAWS * cpu)


def _copy(seconds: float) -> bytes:
    return json.dumps(measure(seconds)).encode()


def run_copies(copies: int, seconds: float) -> list[tuple[int, float]]:
    """Run ``copies`` forked copies at once (this process must be single-threaded)."""
    children: list[tuple[int, int]] = []
    for _ in range(copies):
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: measure, report, leave without cleanup handlers
            os.close(read_end)
            os.write(write_end, _copy(seconds))
            os._exit(0)
        os.close(write_end)
        children.append((pid, read_end))
    results: list[tuple[int, float]] = []
    for pid, read_end in children:
        with os.fdopen(read_end, "rb") as pipe:
            data = pipe.read()
        os.waitpid(pid, 0)
        draws, cpu = json.loads(data)
        results.append((int(draws), float(cpu)))
    return results


def main(argv: list[str]) -> None:
    copies, seconds = int(argv[0]), float(argv[1])
    sys.stdout.write(json.dumps(run_copies(copies, seconds)) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
