"""What a user (or the demo, or a test) does with the stub, over its ``HttpClient``."""

from __future__ import annotations

import secrets
import shutil
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx

from pilot.backends.stub import HttpClient, RetryPolicy, file_route, sha256_file
from pilot.errors import ServerUnreachable
from pilot.grid import credentials
from pilot.job import archive

SUBMIT = "/api/jobs/jdl"
# Failures after the whole request went out: the stub may have acted on it.
_ANSWER_LOST = (httpx.ReadError, httpx.ReadTimeout, httpx.RemoteProtocolError)


class UserClient(HttpClient):
    def __enter__(self) -> UserClient:
        return self

    def __init__(self, base_url: str, **kwargs: Any) -> None:
        kwargs.setdefault("retry", RetryPolicy(attempts=3, deadline=30.0))
        super().__init__(base_url, **kwargs)

    def submit(self, jdl_text: str) -> list[int]:
        """Submit a JDL; its answer lost is not retried (see :meth:`_send_once`)."""
        answer = self.json("POST", SUBMIT, json=[jdl_text])
        return [int(row["JobID"]) for row in answer]

    def _send_once(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One try; a submission whose answer was lost is not tried again, since the stub
        may have stored its jobs already and a second try would store them twice."""
        try:
            return super()._send_once(method, path, **kwargs)
        except _ANSWER_LOST as exc:
            if (method, path) != ("POST", SUBMIT):
                raise
            raise ServerUnreachable(
                f"{self.base_url}: the answer to the submission was lost"
                f" ({exc or type(exc).__name__}); its jobs may be stored:"
                " see pilot-stub jobs before submitting again"
            ) from exc

    def put_sandbox(self, path: Path) -> str:
        sha = sha256_file(path)
        self.upload(f"/api/sandboxes/{sha}", path)
        return sha

    def job(self, job_id: int) -> dict[str, Any]:
        answer: dict[str, Any] = self.json("GET", f"/api/jobs/{job_id}")
        return answer

    def jobs(self, status: str | None = None) -> list[dict[str, Any]]:
        params = {"status": status} if status else None
        answer: list[dict[str, Any]] = self.json("GET", "/api/jobs", params=params)
        return answer

    def logging_info(self, job_id: int) -> list[dict[str, Any]]:
        answer: list[dict[str, Any]] = self.json("GET", f"/api/jobs/{job_id}/logging")
        return answer

    def kill(self, job_id: int) -> str:
        return self._act("POST", f"/api/jobs/{job_id}/kill")

    def reschedule(self, job_id: int) -> str:
        return self._act("POST", f"/api/jobs/{job_id}/reschedule")

    def delete(self, job_id: int) -> str:
        return self._act("DELETE", f"/api/jobs/{job_id}")

    def _act(self, method: str, path: str) -> str:
        """A kill, delete or reschedule: one new request id, reused by the retries of this
        call, so that a retry whose first try landed (its reply lost) gets the first answer
        from the stub instead of "already Killed" or a second reschedule."""
        headers = {"X-Request-Id": secrets.token_urlsafe(24)}
        return str(self.json(method, path, headers=headers)["result"])

    def get_jdl(self, job_id: int) -> str:
        return str(self.json("GET", f"/api/jobs/{job_id}/jdl")["jdl"])

    def get_file(self, lfn: str, dest: Path) -> int:
        """Download the catalogue file ``lfn`` to ``dest`` (checked against its sha256)."""
        entry = self.json("GET", file_route(lfn))
        return self.download(f"/api/sandboxes/{entry['sha256']}", dest, str(entry["sha256"]))

    def get_output(self, job_id: int, target: Path) -> list[str]:
        """Download and safely unpack the job's output sandbox into ``target``.

        Fetching again replaces what an earlier fetch wrote there (the sandbox is unpacked
        beside ``target`` first, so a refused archive leaves ``target`` as it was)."""
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".get-output-") as tmp:
            packed = Path(tmp) / "output.tar.gz"
            self.download(f"/api/jobs/{job_id}/sandbox/output", packed)
            unpacked = Path(tmp) / "files"
            unpacked.mkdir()
            names = archive.safe_unpack(packed, unpacked)
            target.mkdir(exist_ok=True)  # only now: a failed fetch leaves no empty DIR/ID
            for entry in sorted(unpacked.iterdir()):
                old = target / entry.name
                if old.is_dir() and not old.is_symlink():
                    shutil.rmtree(old)
                elif old.exists() or old.is_symlink():
                    old.unlink()
                entry.rename(old)
            return names

    def pilots(self) -> list[dict[str, Any]]:
        answer: list[dict[str, Any]] = self.json("GET", "/api/pilots")
        return answer

    def pilot_log(self, stamp: str) -> str:
        return str(self.json("GET", f"/api/pilots/{stamp}/log")["log"])

    def proxy_upload(
        self, issuer: credentials.Proxy | credentials.Issuer, lifetime: timedelta
    ) -> dict[str, Any]:
        """Store a proxy of ``issuer`` on the stub: the stub makes the key, we sign for it."""
        pending = self.json("POST", "/api/proxies/request")
        chain = credentials.sign_proxy_request(issuer, str(pending["request"]).encode(), lifetime)
        answer: dict[str, Any] = self.json(
            "PUT", f"/api/proxies/request/{pending['id']}", json={"chain": chain.decode()}
        )
        return answer

    def put_file(self, lfn: str, path: Path) -> str:
        sha = self.put_sandbox(path)
        self.json("PUT", file_route(lfn), json={"sha256": sha, "size": path.stat().st_size})
        return sha
