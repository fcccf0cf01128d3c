"""``pilot local``: run a JDL job through the very same stage-in, execution and stage-out
code as on a worker node, with local files instead of a server."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pilot.backends.base import OWNER_PROXY, Inputs, MatchedJob, StatusUpdate, lfn_path
from pilot.errors import NoStoredProxy, SandboxError
from pilot.job import archive, jdl, outpack

log = logging.getLogger(__name__)


def local_inputs(jdl_path: Path, entries: tuple[str, ...]) -> list[tuple[Path, str]]:
    """Local ``InputSandbox`` files, relative to the JDL file or absolute, with base names."""
    files = []
    for name in Inputs.of(entries).local:
        path = Path(name) if Path(name).is_absolute() else jdl_path.parent / name
        if not path.is_file():
            raise SandboxError(f"input sandbox file {name} not found (looked at {path})")
        files.append((path, path.name))
    return files


@dataclass
class LocalBackend:
    """Serves the jobs of one JDL file and keeps their statuses and outputs on disk."""

    jdl_path: Path
    output_dir: Path
    jobs: list[MatchedJob] = field(default_factory=list)
    history: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    name: str = "local"

    @classmethod
    def from_file(cls, jdl_path: Path, output_dir: Path, max_jobs: int = 1000) -> LocalBackend:
        expanded = jdl.expand(jdl.parse(jdl_path.read_bytes()), max_jobs)
        jobs = []
        for n, attrs in enumerate(expanded, 1):
            desc = jdl.JobDescription.from_attrs(attrs)  # refuse a bad job before running any
            extra = {OWNER_PROXY: False}
            jobs.append(MatchedJob(f"local-{n}", jdl.dumps(attrs), extra=extra, desc=desc))
        return cls(jdl_path, output_dir, list(reversed(jobs)))

    def register(self, stamp: str, info: Mapping[str, Any]) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)

    def match(self, resources: Mapping[str, Any]) -> MatchedJob | None:
        if not self.jobs:
            return None
        job = self.jobs.pop()
        self.history[job.job_id] = []
        return job

    def set_status(self, job: MatchedJob, update: StatusUpdate) -> None:
        record = {
            "Status": update.status.value if update.status else None,
            "MinorStatus": update.minor,
            "ApplicationStatus": update.application,
            "Timestamp": update.timestamp,
            **update.extra,
        }
        self.history.setdefault(job.job_id, []).append(record)
        log.info("job %s: %s / %s", job.job_id, record["Status"], record["MinorStatus"])

    def poll_commands(self, job_ids: Sequence[str]) -> list[tuple[str, str]]:
        return []  # nothing to kill a local job from

    def heartbeat(self, job: MatchedJob, metrics: Mapping[str, Any]) -> tuple[str, ...]:
        return ()

    def fetch_input_sandbox(self, job: MatchedJob, inputs: Inputs, dest_dir: Path) -> list[Path]:
        remote = [*inputs.sandboxes, *inputs.lfns, *inputs.urls]
        if remote:
            raise SandboxError(f"local mode cannot fetch {remote[0]}: no server")
        packed = dest_dir / "local-inputs.tar.gz"
        outpack.pack_files(local_inputs(self.jdl_path, inputs.local), packed)
        return [packed]

    def store_output_sandbox(self, job: MatchedJob, packed: Path) -> None:
        target = self.output_dir / job.job_id
        target.mkdir(parents=True, exist_ok=True)
        archive.safe_unpack(packed, target)

    def delegate_proxy(
        self, job: MatchedJob, request_pem: str, lifetime: int, limited: bool
    ) -> str:
        raise NoStoredProxy("local mode has no proxy store to delegate from")

    def fetch_lfn(self, job: MatchedJob, lfn: str, dest: Path) -> None:
        raise SandboxError(f"local mode has no file catalogue to fetch {lfn} from")

    def store_lfn(
        self, job: MatchedJob, lfn: str, source: Path, output_se: str | None = None
    ) -> None:
        target = self.output_dir / job.job_id / "OutputData" / lfn_path(lfn).lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)

    def upload_pilot_log(self, stamp: str, text: str) -> None:
        (self.output_dir / "pilot.log").write_text(text)

    def write_summary(self, outcomes: list[dict[str, Any]]) -> Path:
        path = self.output_dir / "status.json"
        path.write_text(json.dumps({"jobs": outcomes, "history": self.history}, indent=2) + "\n")
        return path

    def close(self) -> None:
        pass
