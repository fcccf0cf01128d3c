"""``cvmfs``: each configured CVMFS repository is mounted and readable; its revision.

Options (``[checks.cvmfs]``): ``repositories`` (list; none configured -> SKIPPED),
``root`` (default /cvmfs), ``probe_timeout`` (seconds per repository, default 10).

A stuck FUSE mount blocks the first ``open`` in the kernel, so each repository is probed
by a separate helper process (:mod:`checks._cvmfs_probe`), all at once, each killed
when its time is up: a stuck mount fails this check, it never hangs the pilot.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from checks import _cvmfs_probe
from checks._util import (
    budget,
    describe_failure,
    option_float,
    option_path,
    option_str_list,
    python_script,
    run_parallel,
)
from pilot.api import CheckContext, CheckOutcome, Status, run_command

log = logging.getLogger(__name__)

NAME = "cvmfs"


def _probe_in_process(path: Path, seconds: float) -> Callable[[], dict[str, Any]]:
    def job() -> dict[str, Any]:
        found = run_parallel([lambda: _cvmfs_probe.probe(str(path))], seconds)[0]
        if found is None:
            return {"ok": False, "error": f"timed out after {seconds:g} s"}
        return found

    return job


def _probe_in_helper(argv: list[str], path: Path, seconds: float) -> Callable[[], dict[str, Any]]:
    def job() -> dict[str, Any]:
        result = run_command([*argv, str(path)], timeout=seconds)
        if not result.ok:
            return {"ok": False, "error": describe_failure(result)}
        try:
            found = json.loads(result.stdout)
        except ValueError:
            return {"ok": False, "error": "probe printed no result"}
        return found if isinstance(found, dict) else {"ok": False, "error": "bad probe result"}

    return job


def probe_all(root: Path, repos: tuple[str, ...], seconds: float) -> dict[str, dict[str, Any]]:
    """Probe every repository under ``root`` at once; each result has ``ok`` and details."""
    argv = python_script(Path(_cvmfs_probe.__file__))
    jobs = [
        _probe_in_process(root / repo, seconds)
        if argv is None
        else _probe_in_helper(argv, root / repo, seconds)
        for repo in repos
    ]
    found = run_parallel(jobs, seconds + 2.0)  # the helpers bound themselves; this is a backstop
    return {
        repo: result if result is not None else {"ok": False, "error": "probe did not finish"}
        for repo, result in zip(repos, found, strict=True)
    }


class CvmfsCheck:
    name: str = NAME
    required: bool = True
    timeout: float | None = 30.0

    def run(self, ctx: CheckContext) -> CheckOutcome:
        repos = option_str_list(ctx, NAME, "repositories")
        root = option_path(ctx, NAME, "root", "/cvmfs")
        if not repos:
            return CheckOutcome(Status.SKIPPED, "no repositories configured", {"root": str(root)})
        seconds = budget(ctx, option_float(ctx, NAME, "probe_timeout", 10.0))
        results = probe_all(root, repos, seconds)
        facts = {"root": str(root), "repositories": results}
        good = [repo for repo in repos if results[repo].get("ok") is True]
        tags = tuple(f"cvmfs:{repo}" for repo in good)
        bad = [f"{repo}: {results[repo].get('error', 'failed')}" for repo in repos]
        bad = [line for repo, line in zip(repos, bad, strict=True) if repo not in good]
        if bad:
            log.debug("cvmfs problems: %s", bad)
            return CheckOutcome(Status.FAILED, "; ".join(bad), facts, tags)
        revisions = ", ".join(f"{repo}@{results[repo].get('revision')}" for repo in good)
        return CheckOutcome(Status.PASSED, f"{len(good)} mounted: {revisions}", facts, tags)
