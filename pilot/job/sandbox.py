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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from pilot.backends.base import (
    Backend,
    InputKind,
    Inputs,
    MatchedJob,
    as_lfn,
    classify,
    lfn_path,
)
from pilot.errors import DiskFullError, PilotError, SandboxError
from pilot.job import archive, outpack
from pilot.job.jdl import JobDescription

log = logging.getLogger(__name__)

OUTPUT_ARCHIVE = "output-sandbox.tar.gz"
# minor statuses of input failures, as DIRAC's JobWrapper words them
LFN_SANDBOX_FAILED = "Failed Downloading InputSandbox LFN(s)"
INPUT_DATA_FAILED = "Input Data Not Available"
URL_FAILED = "Cannot fetch input"


class OutputDataError(SandboxError):
    """OutputData could not be stored: the job must not end Done."""


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
    is_url = classify(entry) is InputKind.URL
    path = urlparse(entry).path if is_url else entry.split(":", 1)[1]
    name = posixpath.basename(path.rstrip("/"))
    if not name or name in (".", "..") or "\x00" in name:
        raise SandboxError(f"Input sandbox rejected: no usable file name in {entry!r}")
    return name


def _place(job_dir: Path, name: str) -> Path:
    target = job_dir / name
    if target.exists() or target.is_symlink():
        raise SandboxError(f"Input sandbox rejected: {name} given twice")
    return target


def stage_in(
    backend: Backend,
    job: MatchedJob,
    desc: JobDescription,
    job_dir: Path,
    limits: archive.UnpackLimits,
    fetch_url: Callable[[str, Path], None],
) -> list[str]:
    """Fetch the job's inputs into ``job_dir``; returns the names that landed there.

    ``fetch_url`` downloads an ``http(s)://`` input without any of the pilot's credentials
    (the caller provides it, so that this module depends on no particular backend)."""
    names: list[str] = []
    inputs = desc.inputs
    # SB: references (and, in local mode, local files) come as archives from the backend.
    if inputs.sandboxes or inputs.local:
        names.extend(_unpack_archives(backend, job, inputs, job_dir, limits))
    for entry in desc.input_sandbox:  # in the job's order
        kind = classify(entry)
        if kind is InputKind.LFN:
            names.append(
                _fetch_one(backend, job, as_lfn(entry), job_dir, fetch_url, LFN_SANDBOX_FAILED)
            )
        elif kind is InputKind.URL:
            names.append(_fetch_one(backend, job, entry, job_dir, fetch_url, URL_FAILED))
    for lfn in desc.input_data:
        if lfn:
            names.append(
                _fetch_one(backend, job, as_lfn(lfn), job_dir, fetch_url, INPUT_DATA_FAILED)
            )
    if names:
        log.info("job %s: inputs staged (%d files)", job.job_id, len(names))
    return names


def _fetch_one(
    backend: Backend,
    job: MatchedJob,
    entry: str,
    job_dir: Path,
    fetch_url: Callable[[str, Path], None],
    failure: str,
) -> str:
    name = _base_name(entry)
    target = _place(job_dir, name)
    try:
        if classify(entry) is InputKind.URL:
            fetch_url(entry, target)
        else:
            backend.fetch_lfn(job, entry, target)
    except DiskFullError:
        raise
    except PilotError as exc:
        text = str(exc)
        detail = text if lfn_path(entry) in text else f"{entry}: {text}"
        raise SandboxError(f"{failure}: {detail}") from exc
    return name


def _unpack_archives(
    backend: Backend,
    job: MatchedJob,
    inputs: Inputs,
    job_dir: Path,
    limits: archive.UnpackLimits,
) -> list[str]:
    download_dir = job_dir.parent / f".{job_dir.name}.download"
    download_dir.mkdir(parents=True, exist_ok=True)
    try:
        names: list[str] = []
        for path in backend.fetch_input_sandbox(job, inputs, download_dir):
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
    with_data: bool = True,
    before_data: Callable[[], None] | None = None,
) -> StageOutResult:
    """Pack the output sandbox (StdOut/StdErr first when over the limit) and upload it,
    then store the OutputData files (only for a payload that succeeded, as DIRAC does:
    ``with_data``; ``before_data`` is called first). OutputDataError when an OutputData
    file could not be stored."""

    def data() -> tuple[str, ...]:
        if not with_data or not desc.output_data:
            return ()
        if before_data is not None:
            before_data()
        return store_output_data(backend, job, desc, job_dir)

    if not desc.output_sandbox:
        return StageOutResult(False, (), (), (), 0, data())
    out = job_dir.parent / f".{job_dir.name}.{OUTPUT_ARCHIVE}"
    priority = [n for n in (desc.std_output, desc.std_error) if n]
    try:
        packed = outpack.pack_output(
            job_dir,
            desc.output_sandbox,
            out,
            max_bytes=max_bytes,
            priority=priority,
            flatten=bool(getattr(backend, "jobwrapper_rules", False)),
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
    stored = data()
    return StageOutResult(
        True, packed.included, packed.missing, packed.dropped, packed.size, stored
    )


def output_lfn(desc: JobDescription, job_id: str, name: str) -> str:
    """Where an OutputData file goes: under OutputPath, else under /jobs/<id>/."""
    base = (desc.output_path or f"/jobs/{job_id}").strip("/")
    return f"LFN:/{base}/{name}"


def _output_files(job_dir: Path, pattern: str) -> list[tuple[Path, str | None]]:
    """Local files of one OutputData entry: ``LFN:/a/b/name`` is ``name`` stored as that
    LFN; anything else is a glob in the job directory, named by the backend's rule."""
    if classify(pattern) is InputKind.LFN:
        name = posixpath.basename(lfn_path(pattern))
        path = job_dir / name
        if not name or not path.is_file() or path.is_symlink():
            return []
        return [(path, as_lfn(pattern))]
    if pattern.startswith("/") or ".." in Path(pattern).parts:
        raise OutputDataError(f"OutputData {pattern}: not a path inside the job directory")
    found = sorted(p for p in job_dir.glob(pattern) if p.is_file() and not p.is_symlink())
    return [(p, None) for p in found]


def store_output_data(
    backend: Backend, job: MatchedJob, desc: JobDescription, job_dir: Path
) -> tuple[str, ...]:
    stored = []
    naming = getattr(backend, "output_lfn", None)  # a backend with its own LFN convention
    for pattern in desc.output_data:
        matches = _output_files(job_dir, pattern)
        if not matches:
            raise OutputDataError(f"OutputData {pattern} not found")
        for path, given in matches:
            if given is not None:
                lfn = given
            elif naming is not None:
                lfn = str(naming(job, desc, path.name))
            else:
                lfn = output_lfn(desc, job.job_id, path.name)
            try:
                backend.store_lfn(job, lfn, path, desc.output_se)
            except DiskFullError:
                raise
            except PilotError as exc:
                raise OutputDataError(f"Failed to upload output data: {exc}") from exc
            stored.append(lfn)
    if stored:
        log.info("job %s: output data stored: %s", job.job_id, ", ".join(stored))
    return tuple(stored)
