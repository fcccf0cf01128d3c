"""The matcher stub as a WSGI application (standard library only).

Routes are shaped after DiracX's REST API; the README's wire protocol section lists them. Pilot
calls that change a job carry that job's token in the ``X-Job-Token`` header.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from http import HTTPStatus
from typing import Any, BinaryIO

from cryptography import x509

from pilot.job import jdl
from server_stub.http11 import BadRequest
from server_stub.monitor import Monitor, Refused, may_act
from server_stub.proxies import ProxyStore
from server_stub.sandboxes import SandboxStore
from server_stub.store import PAYLOAD_TOKEN_PREFIX, Store, StoreError

log = logging.getLogger(__name__)

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
JSON = Any


@dataclass(frozen=True)
class Response:
    status: int
    body: JSON = None
    stream: BinaryIO | None = None
    length: int | None = None
    content_type: str = "application/json"


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    environ: Environ
    identity: str | None = None
    payload_job: int | None = None  # the job of the payload token the request came with

    def json(self, max_bytes: int = 64 << 20) -> JSON:
        length = int(self.headers.get("content-length") or 0)
        if length > max_bytes:
            raise StoreError("request body too large", 413)
        raw = self.environ["wsgi.input"].read(length) if length else b""
        try:
            return json.loads(raw or b"null")
        except ValueError as exc:
            raise StoreError(f"body is not JSON: {exc}") from None

    @property
    def job_token(self) -> str | None:
        return self.headers.get("x-job-token")


Handler = Callable[..., Response]


class Role(StrEnum):
    """Who may call a route: users, pilots, or both."""

    USER = "user"
    PILOT = "pilot"
    ANY = "any"


@dataclass(frozen=True)
class AuthPolicy:
    """Who the stub lets in. With no tokens configured and no client certificates
    required, it is open (loopback development). A verified client certificate (proxies
    allowed) is an identity for every route; else a bearer token of the route's role."""

    pilot_tokens: frozenset[str] = frozenset()
    user_tokens: frozenset[str] = frozenset()

    def tokens_for(self, role: Role) -> frozenset[str]:
        if role is Role.PILOT:
            return self.pilot_tokens
        if role is Role.USER:
            return self.user_tokens
        return self.pilot_tokens | self.user_tokens

    def authorize(self, role: Role, request: Request) -> str | None:
        """The caller's identity; raises 401/403 when the route is closed to it."""
        identity = request.environ.get("stub.peer_identity")
        if identity:
            return str(identity)
        allowed = self.tokens_for(role)
        if not self.pilot_tokens and not self.user_tokens:
            return None
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise StoreError("authentication required: bearer token or client certificate", 401)
        if any(hmac.compare_digest(token, good) for good in allowed):
            return f"{role.value}-token"
        raise StoreError(f"token not accepted for this {role.value} route", 403)


class StubApp:
    """WSGI callable: ``StubApp(store, sandboxes)``."""

    def __init__(
        self,
        store: Store,
        sandboxes: SandboxStore,
        max_parametric: int = 1000,
        auth: AuthPolicy | None = None,
        proxy_cas: Sequence[x509.Certificate] = (),
    ) -> None:
        self.store = store
        self.sandboxes = sandboxes
        self.max_parametric = max_parametric
        self.auth = auth or AuthPolicy()
        self.monitor = Monitor(store, sandboxes, self.auth)  # the web pages, outside /api/
        self.proxies = ProxyStore(store, proxy_cas)  # uploads must lead to one of these CAs
        self.routes: list[tuple[str, re.Pattern[str], Handler, Role]] = [
            ("POST", re.compile(r"/api/jobs/jdl"), self.submit, Role.USER),
            ("GET", re.compile(r"/api/jobs"), self.list_jobs, Role.USER),
            ("POST", re.compile(r"/api/jobs/match"), self.match, Role.PILOT),
            ("PATCH", re.compile(r"/api/jobs/status"), self.set_status, Role.PILOT),
            ("PATCH", re.compile(r"/api/jobs/heartbeat"), self.heartbeat, Role.PILOT),
            ("POST", re.compile(r"/api/jobs/commands"), self.commands, Role.PILOT),
            ("GET", re.compile(r"/api/jobs/(\d+)"), self.get_job, Role.USER),
            ("GET", re.compile(r"/api/jobs/(\d+)/jdl"), self.get_jdl, Role.USER),
            ("GET", re.compile(r"/api/jobs/(\d+)/logging"), self.logging_info, Role.USER),
            ("POST", re.compile(r"/api/jobs/(\d+)/kill"), self.kill, Role.USER),
            ("POST", re.compile(r"/api/jobs/(\d+)/reschedule"), self.reschedule, Role.USER),
            ("DELETE", re.compile(r"/api/jobs/(\d+)"), self.delete, Role.USER),
            (
                "PATCH",
                re.compile(r"/api/jobs/(\d+)/sandbox/output"),
                self.attach_output,
                Role.PILOT,
            ),
            ("GET", re.compile(r"/api/jobs/(\d+)/sandbox/output"), self.get_output, Role.USER),
            ("PUT", re.compile(r"/api/sandboxes/([0-9a-f]{64})"), self.put_sandbox, Role.ANY),
            ("GET", re.compile(r"/api/sandboxes/([0-9a-f]{64})"), self.get_sandbox, Role.ANY),
            ("POST", re.compile(r"/api/pilots"), self.register_pilot, Role.PILOT),
            ("GET", re.compile(r"/api/pilots"), self.list_pilots, Role.USER),
            ("PUT", re.compile(r"/api/pilots/([\w.:@-]+)/log"), self.put_pilot_log, Role.PILOT),
            ("GET", re.compile(r"/api/pilots/([\w.:@-]+)/log"), self.get_pilot_log, Role.USER),
            ("POST", re.compile(r"/api/jobs/(\d+)/proxy"), self.delegate_proxy, Role.PILOT),
            (
                "POST",
                re.compile(r"/api/jobs/(\d+)/bearer-token"),
                self.mint_payload_token,
                Role.PILOT,
            ),
            ("POST", re.compile(r"/api/proxies/request"), self.proxy_request, Role.USER),
            ("PUT", re.compile(r"/api/proxies/request/([\w-]+)"), self.proxy_upload, Role.USER),
            ("GET", re.compile(r"/api/proxies"), self.proxy_info, Role.USER),
            ("PUT", re.compile(r"/api/files/(LFN:.+)"), self.put_file, Role.ANY),
            ("GET", re.compile(r"/api/files/(LFN:.+)"), self.get_file, Role.ANY),
        ]
        # what a payload's bearer token opens: its owner's files and its own job's status
        self.payload_routes: frozenset[Handler] = frozenset(
            {self.get_job, self.put_file, self.get_file, self.put_sandbox, self.get_sandbox}
        )

    # -- WSGI plumbing ------------------------------------------------------------------

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if not str(environ.get("PATH_INFO", "/")).startswith("/api/"):
            return self.monitor(environ, start_response)
        request = _request(environ)
        try:
            self.monitor.refuse_cross_site(environ)
            response = self.dispatch(request)
        except Refused as exc:
            response = Response(exc.status, {"detail": str(exc)})
        except StoreError as exc:
            response = Response(exc.status, {"detail": str(exc)})
        except jdl.JDLError as exc:
            response = Response(400, {"detail": f"invalid JDL: {exc}"})
        except OverflowError:  # SQLite's integers are 64-bit: no job, size or time beyond
            response = Response(400, {"detail": "a number in the request is out of range"})
        except BadRequest:  # the request's body failed (too slow, malformed): the server answers
            raise
        except Exception:
            log.exception("internal error on %s %s", request.method, request.path)
            response = Response(500, {"detail": "internal server error"})
        return _send(response, environ, start_response)

    def dispatch(self, request: Request) -> Response:
        allowed = False
        for method, pattern, handler, role in self.routes:
            found = pattern.fullmatch(request.path)
            if found is None:
                continue
            if method != request.method:
                allowed = True
                continue
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() == "bearer" and token.startswith(PAYLOAD_TOKEN_PREFIX):
                job_id, owner = self.store.payload_token_owner(token)  # 401 when dead
                if handler not in self.payload_routes:
                    raise StoreError(
                        "a payload token grants only its owner's files and its job's status",
                        403,
                    )
                payload = replace(request, identity=owner, payload_job=job_id)
                return handler(payload, *found.groups())
            identity = self.auth.authorize(role, request)
            return handler(replace(request, identity=identity), *found.groups())
        if allowed:
            return Response(405, {"detail": f"{request.method} not allowed on {request.path}"})
        return Response(404, {"detail": f"no route {request.path}"})

    # -- jobs ---------------------------------------------------------------------------

    def submit(self, request: Request) -> Response:
        body = request.json()
        texts = [body] if isinstance(body, str) else body
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise StoreError("body must be a JDL string or a list of JDL strings")
        expanded = []
        for text in texts:
            expanded.extend(jdl.expand(jdl.parse(text), self.max_parametric))
        owner = request.identity or _claimed_user(request)
        ids = self.store.submit_many(expanded, owner)  # all validated before any is stored
        return Response(200, [{"JobID": i, "Status": "Waiting"} for i in ids])

    def list_jobs(self, request: Request) -> Response:
        return Response(200, self.store.jobs(request.query.get("status")))

    def get_job(self, request: Request, job_id: str) -> Response:
        if request.payload_job is not None and request.payload_job != int(job_id):
            raise StoreError(f"a payload token grants no access to job {job_id}", 403)
        return Response(200, self.store.job(int(job_id)))

    def get_jdl(self, request: Request, job_id: str) -> Response:
        return Response(200, {"jdl": self.store.jdl_of(int(job_id))})

    def logging_info(self, request: Request, job_id: str) -> Response:
        return Response(200, self.store.history(int(job_id)))

    def kill(self, request: Request, job_id: str) -> Response:
        self._owner_only(request, int(job_id), "kill")
        result = self.store.kill(int(job_id), _user_request_id(request))
        return Response(200, {"job_id": int(job_id), "result": result})

    def reschedule(self, request: Request, job_id: str) -> Response:
        self._owner_only(request, int(job_id), "reschedule")
        result = self.store.reschedule(int(job_id), _user_request_id(request))
        return Response(200, {"job_id": int(job_id), "result": result})

    def delete(self, request: Request, job_id: str) -> Response:
        self._owner_only(request, int(job_id), "delete")
        result = self.store.delete(int(job_id), _user_request_id(request))
        return Response(200, {"job_id": int(job_id), "result": result})

    def _owner_only(self, request: Request, job_id: int, action: str) -> None:
        # no identity here means an open stub: authorize() refused the rest already
        if not may_act(request.identity, self.store.job(job_id), open_stub=True):
            raise StoreError(f"only the job's owner may {action} job {job_id}", 403)

    # -- pilot side ---------------------------------------------------------------------

    def match(self, request: Request) -> Response:
        body = _object(request.json())
        resources = _object(body.get("resources", {}))
        pilot = str(body.get("pilot", "unknown"))
        dry_run = bool(body.get("dry_run", False))
        request_id = body.get("request_id")
        if request_id is not None and not (
            isinstance(request_id, str) and 8 <= len(request_id) <= 128
        ):
            raise StoreError("request_id must be a string of 8 to 128 characters")
        claim = self.store.match(resources, pilot, dry_run, request_id)
        if not dry_run:
            self.monitor.note_match(pilot, resources, None if claim is None else claim.job_id)
        if dry_run:
            found = None if claim is None else {"job_id": claim.job_id, "jdl": claim.jdl}
            misses = self.store.near_misses(resources) if claim is None else []
            return Response(200, {"match": found, "near_misses": misses})
        if claim is None:
            return Response(204)
        log.info("job %d matched to pilot %s", claim.job_id, pilot)
        answer = {"job_id": claim.job_id, "jdl": claim.jdl, "token": claim.token}
        owner = self.store.job(claim.job_id)["owner"]
        answer["owner"] = bool(owner)  # whether the job can have a payload token
        answer["owner_proxy"] = self.proxies.available(owner)
        return Response(200, answer)

    def set_status(self, request: Request) -> Response:
        body = _object(request.json())
        done: dict[str, int] = {}
        for job_id, updates in body.items():
            jid = _job_id(job_id)
            spent = self.store.check_token(jid, request.job_token, spent_ok=True)
            stamped = [(_timestamp(k), _object(v)) for k, v in _object(updates).items()]
            items = sorted(stamped, key=lambda item: item[0])  # "1" and "1.0": one time
            if spent and not all(
                self.store.has_update(jid, ts, str(u.get("Source", "Pilot"))) for ts, u in items
            ):  # the job has ended: only repeats of what its pilot already sent succeed
                raise StoreError(f"job token does not grant access to job {jid}", 403)
            for ts, update in items:
                self.store.set_status(jid, update, ts)
            done[str(jid)] = len(items)
        return Response(200, {"success": done})

    def heartbeat(self, request: Request) -> Response:
        body = _object(request.json())
        commands = []
        for job_id, data in body.items():
            jid = _job_id(job_id)
            self.store.check_token(jid, request.job_token)
            for command in self.store.heartbeat(jid, _object(data)):
                commands.append({"job_id": jid, "command": command})
        return Response(200, commands)

    def commands(self, request: Request) -> Response:
        """A pilot's light poll: pending commands (Kill) for its running jobs."""
        body = _object(request.json())
        jobs = body.get("jobs", [])
        if not isinstance(jobs, list) or len(jobs) > 10000:
            raise StoreError("jobs must be a list of job ids")
        found = self.store.commands(str(body.get("pilot", "")), [_job_id(str(j)) for j in jobs])
        return Response(200, [{"job_id": jid, "command": c} for jid, c in found])

    def attach_output(self, request: Request, job_id: str) -> Response:
        jid = int(job_id)
        spent = self.store.check_token(jid, request.job_token, spent_ok=True)
        sha = str(_object(request.json()).get("sha256", ""))
        if not self.sandboxes.exists(sha):
            raise StoreError(f"no sandbox {sha}", 404)
        if spent:  # the job has ended: a repeat of its attach succeeds, nothing else
            if self.store.job(jid)["output_sandbox"] != sha:
                raise StoreError(f"job token does not grant access to job {jid}", 403)
            return Response(200, {"job_id": jid, "sha256": sha})
        self.store.attach_output(jid, sha)
        return Response(200, {"job_id": jid, "sha256": sha})

    def get_output(self, request: Request, job_id: str) -> Response:
        fh, size = self.sandboxes.open(self.store.output_of(int(job_id)))
        return Response(200, stream=fh, length=size, content_type="application/octet-stream")

    def put_sandbox(self, request: Request, sha256: str) -> Response:
        if self.sandboxes.exists(sha256):
            _drain(request)
            return Response(200, {"sha256": sha256, "existed": True})
        length = request.headers.get("content-length")
        size = self.sandboxes.put(
            sha256, request.environ["wsgi.input"], int(length) if length else None
        )
        log.info("sandbox %s stored (%d bytes)", sha256[:12], size)
        return Response(201, {"sha256": sha256, "size": size})

    def get_sandbox(self, request: Request, sha256: str) -> Response:
        if request.payload_job is not None and not self.store.owns_content(
            str(request.identity), sha256
        ):
            raise StoreError(f"{sha256} is not the content of a file of the job's owner", 403)
        fh, size = self.sandboxes.open(sha256)
        return Response(200, stream=fh, length=size, content_type="application/octet-stream")

    def register_pilot(self, request: Request) -> Response:
        body = _object(request.json())
        stamp = str(body.get("stamp") or "")
        if not re.fullmatch(r"[\w.:@-]{1,128}", stamp):
            raise StoreError("pilot stamp missing or malformed")
        info = _object(body.get("info", {}))
        info["identity"] = request.identity
        self.store.register_pilot(stamp, info)
        return Response(200, {"stamp": stamp})

    def list_pilots(self, request: Request) -> Response:
        return Response(200, self.store.pilots())

    def put_pilot_log(self, request: Request, stamp: str) -> Response:
        text = _object(request.json()).get("log", "")
        self.store.set_pilot_log(stamp, str(text))
        return Response(200, {"stamp": stamp})

    def get_pilot_log(self, request: Request, stamp: str) -> Response:
        return Response(200, {"stamp": stamp, "log": self.store.pilot_log(stamp)})

    def delegate_proxy(self, request: Request, job_id: str) -> Response:
        jid = int(job_id)
        self.store.check_token(jid, request.job_token)
        body = _object(request.json())
        wanted = body.get("lifetime")
        if not isinstance(wanted, int | float) or isinstance(wanted, bool):
            raise StoreError("lifetime must be a number of seconds")
        answer = self.proxies.delegate(
            jid, str(body.get("request", "")), float(wanted), bool(body.get("limited", False))
        )
        return Response(200, answer)

    def mint_payload_token(self, request: Request, job_id: str) -> Response:
        """The payload's bearer token (pilot, with the job's token): ``secret`` is the
        pilot's, so that a retry or a renewal gets the same token."""
        jid = int(job_id)
        self.store.check_token(jid, request.job_token)
        body = _object(request.json())
        secret, wanted = body.get("secret"), body.get("lifetime")
        if not (isinstance(secret, str) and 32 <= len(secret) <= 128):
            raise StoreError("secret must be a string of 32 to 128 characters")
        if not isinstance(wanted, int | float) or isinstance(wanted, bool) or not 60 <= wanted:
            raise StoreError("lifetime must be a number of seconds, at least 60")
        minted = self.store.mint_payload_token(jid, secret, float(wanted))
        if minted is None:
            return Response(200, {"token": None, "detail": f"job {jid} has no owner identity"})
        log.info("job %d: payload token minted", jid)
        return Response(200, {"token": minted[0], "expires": minted[1]})

    def proxy_request(self, request: Request) -> Response:
        return Response(200, self.proxies.new_upload())

    def proxy_upload(self, request: Request, request_id: str) -> Response:
        body = _object(request.json())
        answer = self.proxies.complete_upload(
            request_id, str(body.get("chain", "")), request.identity
        )
        return Response(200, answer)

    def proxy_info(self, request: Request) -> Response:
        return Response(200, self.proxies.info(request.identity or _claimed_user(request)))

    def put_file(self, request: Request, lfn: str) -> Response:
        body = _object(request.json())
        sha = str(body.get("sha256", ""))
        if not self.sandboxes.exists(sha):
            raise StoreError(f"no stored content {sha}", 404)
        owner = request.identity or _claimed_user(request)
        job_id = body.get("job_id")  # a pilot storing a job's output: the job's owner's
        if request.payload_job is None and isinstance(job_id, int) and request.job_token:
            try:
                self.store.check_token(job_id, request.job_token, spent_ok=True)
            except StoreError:
                pass  # not that job's token: the file is the caller's, as without one
            else:
                owner = self.store.job(job_id)["owner"]
        only_owner = request.payload_job is not None
        self.store.put_file(lfn, sha, int(body.get("size", 0)), owner, only_owner)
        return Response(200, {"lfn": lfn, "sha256": sha})

    def get_file(self, request: Request, lfn: str) -> Response:
        entry = self.store.file(lfn)
        if request.payload_job is not None and entry["owner"] != request.identity:
            raise StoreError(f"{lfn} is not a file of the job's owner", 403)
        return Response(200, entry)


def _request(environ: Environ) -> Request:
    headers = {
        key[5:].replace("_", "-").lower(): value
        for key, value in environ.items()
        if key.startswith("HTTP_")
    }
    for key in ("CONTENT_LENGTH", "CONTENT_TYPE"):
        if environ.get(key):
            headers[key.replace("_", "-").lower()] = environ[key]
    query = {}
    for part in environ.get("QUERY_STRING", "").split("&"):
        if "=" in part:
            k, v = part.split("=", 1)
            query[k] = v
    path = environ.get("PATH_INFO", "/")
    return Request(environ["REQUEST_METHOD"], path, query, headers, environ)


def _send(response: Response, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    status = f"{response.status} {HTTPStatus(response.status).phrase}"
    if response.stream is not None:
        headers = [("Content-Type", response.content_type)]
        if response.length is not None:
            headers.append(("Content-Length", str(response.length)))
        start_response(status, headers)
        wrapper = environ.get("wsgi.file_wrapper")
        if wrapper is not None:
            return wrapper(response.stream, 1 << 20)  # type: ignore[no-any-return]
        return iter(lambda: response.stream.read(1 << 20), b"")  # type: ignore[union-attr]
    data = b"" if response.status == 204 else json.dumps(response.body).encode()
    start_response(
        status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
    )
    return [data]


def _claimed_user(request: Request) -> str | None:
    """The ``X-User`` header of a caller without identity (an open stub): a label, never a
    DN, which only a client certificate proves (a job owned by a DN gets its delegated
    proxy)."""
    value = request.headers.get("x-user")
    if value is not None and value.startswith("/"):
        raise StoreError("X-User cannot be a DN: connect with that DN's client certificate", 403)
    return value


def _user_request_id(request: Request) -> str | None:
    """The ``X-Request-Id`` of a user's kill, delete or reschedule: its retries reuse it."""
    value = request.headers.get("x-request-id")
    if value is None:
        return None
    if not 8 <= len(value) <= 128:
        raise StoreError("X-Request-Id must be 8 to 128 characters")
    return value


def _object(value: JSON) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise StoreError("expected a JSON object")
    return value


def _job_id(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise StoreError(f"bad job id {value!r}") from None


def _timestamp(value: str) -> float:
    try:
        stamp = float(value)
    except ValueError:
        pass
    else:
        if not math.isfinite(stamp):  # NaN would be stored as NULL (a 500)
            raise StoreError(f"bad timestamp {value!r}")
        return stamp
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        raise StoreError(f"bad timestamp {value!r}") from None


def _drain(request: Request) -> None:
    remaining = int(request.headers.get("content-length") or 0)
    stream = request.environ["wsgi.input"]
    while remaining > 0:
        chunk = stream.read(min(remaining, 1 << 20))
        if not chunk:
            break
        remaining -= len(chunk)
