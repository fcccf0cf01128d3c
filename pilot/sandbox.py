"""Stage-in and stage-out of one job: fetch and safely unpack inputs, pack and send outputs."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from pilot import archive
from pilot.backend import Backend, MatchedJob
from pilot.jdl import JobDescription

log = logging.getLogger(__name__)

OUTPUT_ARCHIVE = "output-sandbox.tar.gz"


@dataclass(frozen=True)
class StageOutResult:
    uploaded: bool
    included: tuple[str, ...]
    missing: tuple[str, ...]
    dropped: tuple[str, ...]
    size: int

    def note(self) -> str:
        """What the final status should mention (empty when everything went)."""
        parts = []
        if self.dropped:
            parts.append(f"dropped from output sandbox (size limit): {', '.join(self.dropped)}")
        if self.missing:
            parts.append(f"not found for output sandbox: {', '.join(self.missing)}")
        return "; ".join(parts)


def stage_in(
    backend: Backend,
    job: MatchedJob,
    desc: JobDescription,
    job_dir: Path,
    limits: archive.UnpackLimits,
) -> list[str]:
    """Fetch the input sandbox archives and unpack each into ``job_dir``; returns the names."""
    if not desc.input_sandbox:
        return []
    download_dir = job_dir.parent / f".{job_dir.name}.download"
    download_dir.mkdir(parents=True, exist_ok=True)
    try:
        names: list[str] = []
        for path in backend.fetch_input_sandbox(job, download_dir):
            names.extend(archive.safe_unpack(path, job_dir, limits))
            path.unlink()
    finally:
        shutil.rmtree(download_dir, ignore_errors=True)
    log.info("job %s: input sandbox staged (%d files)", job.job_id, len(names))
    return names


def stage_out(
    backend: Backend,
    job: MatchedJob,
    desc: JobDescription,
    job_dir: Path,
    max_bytes: int,
) -> StageOutResult:
    """Pack the output sandbox (StdOut/StdErr first when over the limit) and upload it."""
    if not desc.output_sandbox:
        return StageOutResult(False, (), (), (), 0)
    out = job_dir.parent / f".{job_dir.name}.{OUTPUT_ARCHIVE}"
    priority = [n for n in (desc.std_output, desc.std_error) if n]
    try:
        packed = archive.pack_output(
            job_dir, desc.output_sandbox, out, max_bytes=max_bytes, priority=priority
        )
        backend.store_output_sandbox(job, out)
    finally:
        out.unlink(missing_ok=True)
    log.info(
        "job %s: output sandbox uploaded (%d files, %d bytes)",
        job.job_id,
        len(packed.included),
        packed.size,
    )
    return StageOutResult(True, packed.included, packed.missing, packed.dropped, packed.size)
