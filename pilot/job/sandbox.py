"""Stage-in and stage-out of one job: fetch and safely unpack inputs, pack and send outputs.

Input sandbox entries: ``SB:<ref>`` archives (fetched by the backend, unpacked safely),
``LFN:`` files (resolved through the backend's catalogue), and ``https://``/``http://``
URLs (fetched directly, without any of the pilot's credentials); each file lands in the
job directory under its base name. ``InputData`` LFNs are fetched the same way. After
the payload, ``OutputSandbox`` globs are packed and uploaded, and ``OutputData`` files are
stored in the catalogue.
"""

from __future__ import annotations

import logging
import posixpath
import shutil
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from pilot.backends.base import Backend, MatchedJob
from pilot.backends.stub import HttpClient, RetryPolicy
from pilot.errors import PilotError, SandboxError
from pilot.job import archive, outpack
from pilot.job.jdl import JobDescription

log = logging.getLogger(__name__)

OUTPUT_ARCHIVE = "output-sandbox.tar.gz"
URL_PREFIXES = ("https://", "http://")


@dataclass(frozen=True)
class StageOutResult:
    uploaded: bool
    included: tuple[str, ...]
    missing: tuple[str, ...]
    dropped: tuple[str, ...]
    size: int
    output_data: tuple[str, ...] = ()  # LFNs stored

    def note(self) -> str:
        """What the final status should mention (empty when everything went)."""
        parts = []
        if self.dropped:
            parts.append(f"dropped from output sandbox (size limit): {', '.join(self.dropped)}")
        if self.missing:
            parts.append(f"not found for output sandbox: {', '.join(self.missing)}")
        return "; ".join(parts)


def _base_name(entry: str) -> str:
    path = urlparse(entry).path if entry.startswith(URL_PREFIXES) else entry.split(":", 1)[1]
    name = posixpath.basename(path.rstrip("/"))
    if not name or name in (".", "..") or "\x00" in name:
        raise SandboxError(f"Input sandbox rejected: no usable file name in {entry!r}")
    return name


def _place(job_dir: Path, name: str) -> Path:
    target = job_dir / name
    if target.exists() or target.is_symlink():
        raise SandboxError(f"Input sandbox rejected: {name} given twice")
    return target


def fetch_url(url: str, dest: Path) -> None:
    """A plain download: no bearer token, no client certificate goes to a foreign host."""
    with HttpClient(url, retry=RetryPolicy(attempts=4, deadline=300.0)) as plain:
        plain.download(url, dest)


def stage_in(
    backend: Backend,
    job: MatchedJob,
    desc: JobDescription,
    job_dir: Path,
    limits: archive.UnpackLimits,
) -> list[str]:
    """Fetch the job's inputs into ``job_dir``; returns the names that landed there."""
    names: list[str] = []
    # SB: references (and, in local mode, local files) come as archives from the backend.
    if any(not e.startswith(("LFN:", "lfn:", *URL_PREFIXES)) for e in desc.input_sandbox):
        names.extend(_unpack_archives(backend, job, job_dir, limits))
    for entry in desc.input_sandbox:
        if entry.startswith(("LFN:", "lfn:")):
            names.append(_fetch_one(backend, job, "LFN:" + entry[4:], job_dir))
        elif entry.startswith(URL_PREFIXES):
            names.append(_fetch_one(backend, job, entry, job_dir))
    for lfn in desc.input_data:
        if lfn:
            names.append(_fetch_one(backend, job, lfn if ":" in lfn else f"LFN:{lfn}", job_dir))
    if names:
        log.info("job %s: inputs staged (%d files)", job.job_id, len(names))
    return names


def _fetch_one(backend: Backend, job: MatchedJob, entry: str, job_dir: Path) -> str:
    name = _base_name(entry)
    target = _place(job_dir, name)
    try:
        if entry.startswith(URL_PREFIXES):
            fetch_url(entry, target)
        else:
            backend.fetch_lfn(job, entry, target)
    except SandboxError:
        raise
    except PilotError as exc:
        raise SandboxError(f"Cannot fetch input {entry}: {exc}") from exc
    return name


def _unpack_archives(
    backend: Backend, job: MatchedJob, job_dir: Path, limits: archive.UnpackLimits
) -> list[str]:
    download_dir = job_dir.parent / f".{job_dir.name}.download"
    download_dir.mkdir(parents=True, exist_ok=True)
    try:
        names: list[str] = []
        for path in backend.fetch_input_sandbox(job, download_dir):
            names.extend(archive.safe_unpack(path, job_dir, limits))
            path.unlink()
        return names
    finally:
        shutil.rmtree(download_dir, ignore_errors=True)


def stage_out(
    backend: Backend,
    job: MatchedJob,
    desc: JobDescription,
    job_dir: Path,
    max_bytes: int,
) -> StageOutResult:
    """Pack the output sandbox (StdOut/StdErr first when over the limit) and upload it,
    then store the OutputData files."""
    if not desc.output_sandbox:
        return StageOutResult(False, (), (), (), 0, store_output_data(backend, job, desc, job_dir))
    out = job_dir.parent / f".{job_dir.name}.{OUTPUT_ARCHIVE}"
    priority = [n for n in (desc.std_output, desc.std_error) if n]
    try:
        packed = outpack.pack_output(
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
    stored = store_output_data(backend, job, desc, job_dir)
    return StageOutResult(
        True, packed.included, packed.missing, packed.dropped, packed.size, stored
    )


def output_lfn(desc: JobDescription, job_id: str, name: str) -> str:
    """Where an OutputData file goes: under OutputPath, else under /jobs/<id>/."""
    base = (desc.output_path or f"/jobs/{job_id}").strip("/")
    return f"LFN:/{base}/{name}"


def store_output_data(
    backend: Backend, job: MatchedJob, desc: JobDescription, job_dir: Path
) -> tuple[str, ...]:
    stored = []
    for pattern in desc.output_data:
        name = pattern[4:] if pattern.startswith("LFN:") else pattern
        matches = sorted(p for p in job_dir.glob(name) if p.is_file() and not p.is_symlink())
        if not matches:
            raise SandboxError(f"OutputData {pattern} not found")
        for path in matches:
            lfn = output_lfn(desc, job.job_id, path.name)
            backend.store_lfn(job, lfn, path)
            stored.append(lfn)
    if stored:
        log.info("job %s: output data stored: %s", job.job_id, ", ".join(stored))
    return tuple(stored)
