"""Job Monitor and Pilot Monitor: the web pages ``pilot-stub serve`` shows at ``/``.

A WSGI callable beside the API (:class:`server_stub.app.StubApp` hands it every path
outside ``/api/``). Who may look is decided as for the API's user routes: a verified
client certificate, else (when the stub has user tokens) a user token, given once on the
sign-in page and then carried by a session cookie, else nobody on an open stub
(loopback development). Pages are plain HTML with a stylesheet and one small script,
both served from the package; the script only polls ``/live`` and reloads the page when
what it shows has changed (``<noscript>`` pages refresh themselves every 10 s).

Defences, since everything shown comes from users and nodes: all text is escaped by
:mod:`server_stub.markup`; every answer carries a strict Content-Security-Policy (no
inline script or style, nothing from elsewhere, no framing); actions that change state
are POSTs that need the session's CSRF token and a same-origin ``Origin`` (or
``Referer``); on plain HTTP the ``Host`` must be an address or ``localhost``, so a DNS
name rebound to the loopback address cannot reach the pages.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from importlib import resources
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import parse_qs, quote, urlsplit

from pilot.backends.base import FINAL_STATUSES, JobStatus
from server_stub import monitor_pages as pages
from server_stub.http11 import BadRequest
from server_stub.markup import Safe
from server_stub.sandboxes import SandboxStore
from server_stub.store import MONITOR_FILTERS, MONITOR_SORTS, RESCHEDULABLE, Store, StoreError

if TYPE_CHECKING:
    from server_stub.app import AuthPolicy

log = logging.getLogger(__name__)

Environ = dict[str, Any]
StartResponse = Callable[..., Any]

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self';"
    " connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = [
    ("Content-Security-Policy", CSP),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "same-origin"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
    ("Cache-Control", "no-store"),
]
STATIC = {
    "monitor.css": "text/css; charset=utf-8",
    "live.js": "text/javascript; charset=utf-8",
}
COOKIE = "monitor_session"
SESSION_SECONDS = 12 * 3600
MAX_SESSIONS = 1000
MAX_FORM_BYTES = 4096
KILLABLE = frozenset(set(JobStatus) - FINAL_STATUSES)
RESULTS = ("Killed", "Kill requested", "Rescheduled")  # what a redirect may announce


@dataclass(frozen=True)
class LastMatch:
    time: float
    resources: Mapping[str, Any]
    job_id: int | None


@dataclass
class Answer:
    status: int
    body: Iterable[bytes]
    content_type: str = "text/html; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)
    length: int | None = None


class Refused(Exception):
    """A request the monitor turns down with ``status`` and a one-line reason."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Visitor:
    """Who is asking: ``identity`` as the API would see it (None on an open stub)."""

    identity: str | None
    sid: str
    new_sid: bool


def may_act(identity: str | None, job: Mapping[str, Any], open_stub: bool) -> bool:
    """Whether a caller may kill, reschedule or delete ``job``: someone with an identity
    (certificate, user token) acts on their own jobs only; without one, only on an open
    stub. The pages and the JSON API both ask this."""
    if identity is None:
        return open_stub
    return identity == job.get("owner")


class Monitor:
    def __init__(self, store: Store, sandboxes: SandboxStore, auth: AuthPolicy) -> None:
        self.store = store
        self.sandboxes = sandboxes
        self.auth = auth
        store.ensure_monitor_indexes()
        self._secret = secrets.token_bytes(32)
        self._lock = threading.Lock()
        self._logins: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._matches: OrderedDict[str, LastMatch] = OrderedDict()
        self._static = {
            name: resources.files("server_stub").joinpath("static", name).read_bytes()
            for name in STATIC
        }

    # -- hooks for the API ----------------------------------------------------------------

    def note_match(self, pilot: str, offered: Mapping[str, Any], job_id: int | None) -> None:
        """Remember a pilot's last match request (bounded; shown on its page)."""
        with self._lock:
            self._matches[pilot] = LastMatch(time.time(), dict(offered), job_id)
            self._matches.move_to_end(pilot)
            while len(self._matches) > 10000:
                self._matches.popitem(last=False)

    # -- WSGI -----------------------------------------------------------------------------

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        try:
            answer = self._handle(environ)
        except Refused as exc:
            answer = self._error(exc.status, str(exc), environ)
        except StoreError as exc:
            answer = self._error(exc.status, str(exc), environ)
        except OverflowError:  # a job id beyond SQLite's 64-bit integers: no such job
            answer = self._error(404, "no such job", environ)
        except BadRequest:  # the request's body failed (too slow, malformed): the server answers
            raise
        except Exception:
            log.exception("monitor: internal error on %s", environ.get("PATH_INFO"))
            answer = self._error(500, "internal error (see the stub's log)", environ)
        headers = [("Content-Type", answer.content_type), *SECURITY_HEADERS, *answer.headers]
        if answer.length is None:
            body = list(answer.body)
            headers.append(("Content-Length", str(sum(len(b) for b in body))))
            answer.body = body
        else:
            headers.append(("Content-Length", str(answer.length)))
        start_response(f"{answer.status} {HTTPStatus(answer.status).phrase}", headers)
        return answer.body

    def _handle(self, environ: Environ) -> Answer:
        method = environ["REQUEST_METHOD"]
        path = environ.get("PATH_INFO") or "/"
        self._check_host(environ)
        if path == "/favicon.ico":  # browsers ask for it; there is none
            return Answer(204, [b""], "text/plain")
        if path.startswith("/static/"):
            return self._static_file(path[len("/static/") :], method)
        if path == "/login":
            return self._login(environ, method)
        visitor = self._visitor(environ)
        if visitor is None:
            if method == "GET" and path != "/live":
                target = path + (
                    ("?" + environ["QUERY_STRING"]) if environ.get("QUERY_STRING") else ""
                )
                return _redirect("/login?" + _query(next=target))
            raise Refused(401, "sign in first (user token) or use a client certificate")
        if method == "POST":
            form = self._checked_form(environ, visitor)
            return self._post(path, form, visitor, environ)
        if method not in ("GET", "HEAD"):
            raise Refused(405, f"{method} not allowed here")
        query = _parse_query(environ.get("QUERY_STRING", ""))
        if path == "/live":
            return self._live(query.get("path", "/"), visitor, environ)
        found = re.fullmatch(r"/jobs/(\d+)/output", path)
        if found:
            return self._output(int(found.group(1)))
        found = re.fullmatch(r"/pilots/([\w.:@-]+)/log", path)
        if found:
            text = self.store.pilot_log(found.group(1)).encode()
            return Answer(200, [text], "text/plain; charset=utf-8")
        title, main, section, live = self._page(path, query, visitor)
        return self._html(title, main, section, visitor, environ, live)

    # -- pages ----------------------------------------------------------------------------

    def _page(
        self, path: str, query: Mapping[str, str], visitor: Visitor
    ) -> tuple[str, Safe, str, bool]:
        """(title, main content, section, live) of the page at ``path``."""
        if path == "/":
            title, main = self._jobs(query)
            return title, main, "jobs", True
        found = re.fullmatch(r"/jobs/(\d+)", path)
        if found:
            title, main = self._job(int(found.group(1)), query, visitor)
            return title, main, "jobs", True
        if path == "/pilots":
            title, main = self._pilots(query)
            return title, main, "pilots", True
        found = re.fullmatch(r"/pilots/([\w.:@-]+)", path)
        if found:
            title, main = self._pilot(found.group(1))
            return title, main, "pilots", True
        raise Refused(404, f"no page {path}")

    def _jobs(self, query: Mapping[str, str]) -> tuple[str, Safe]:
        jq = job_query(query)
        rows, total = self.store.monitor_jobs(
            jq.filters, jq.sort, jq.descending, (jq.page - 1) * jq.size, jq.size
        )
        choices = {key: self.store.monitor_choices(key) for key in ("status", "site", "owner")}
        return pages.jobs_page(jq, rows, total, choices)

    def _job(self, job_id: int, query: Mapping[str, str], visitor: Visitor) -> tuple[str, Safe]:
        job = self.store.job(job_id)
        result = query.get("result")
        return pages.job_page(
            job,
            self.store.history(job_id),
            self.store.jdl_of(job_id),
            may_act=self._may_act(visitor, job),
            csrf=self._csrf(visitor.sid),
            result=result if result in RESULTS else None,
            killable=job["status"] in KILLABLE,
            reschedulable=job["status"] in RESCHEDULABLE,
        )

    def _pilots(self, query: Mapping[str, str]) -> tuple[str, Safe]:
        page = _whole(query.get("page", "1"), "page", 1, 10**9)
        size = 100
        rows, total = self.store.monitor_pilots((page - 1) * size, size)
        with self._lock:
            last = {p["stamp"]: self._matches.get(p["stamp"]) for p in rows}
        return pages.pilots_page(rows, total, page, size, last)

    def _pilot(self, stamp: str) -> tuple[str, Safe]:
        pilot = self.store.pilot(stamp)
        with self._lock:
            last = self._matches.get(stamp)
        misses = None
        waiting = 0
        if last is not None and last.job_id is None:
            waiting = self.store.monitor_jobs({"status": JobStatus.WAITING}, limit=0)[1]
            if waiting:
                misses = self.store.near_misses(last.resources)
        return pages.pilot_page(pilot, self.store.jobs_of_pilot(stamp), last, misses, waiting)

    def _live(self, target: str, visitor: Visitor, environ: Environ) -> Answer:
        """The version of the page at ``target`` (a path with its query)."""
        parts = urlsplit(target)
        if parts.scheme or parts.netloc or not parts.path.startswith("/"):
            raise Refused(400, "path must be a path on this server, like /jobs/12")
        _, main, _, _ = self._page(parts.path, _parse_query(parts.query), visitor)
        return Answer(200, [pages.live_answer(_version(main))], "application/json")

    def _html(
        self,
        title: str,
        main: Safe,
        section: str,
        visitor: Visitor,
        environ: Environ,
        live: bool,
    ) -> Answer:
        target = environ.get("PATH_INFO", "/")
        if environ.get("QUERY_STRING"):
            target += "?" + environ["QUERY_STRING"]
        body = pages.frame(
            title,
            main,
            section=section,
            who=visitor.identity,
            csrf=self._csrf(visitor.sid),
            live="/live?" + _query(path=target) if live else None,
            version=_version(main) if live else None,
        )
        return Answer(200, [body], headers=self._cookie(visitor, environ))

    def _output(self, job_id: int) -> Answer:
        fh, size = self.sandboxes.open(self.store.output_of(job_id))
        name = f"job-{job_id}-output.tar.gz"
        return Answer(
            200,
            _chunks(fh),
            "application/octet-stream",
            [("Content-Disposition", f'attachment; filename="{name}"')],
            size,
        )

    def _static_file(self, name: str, method: str) -> Answer:
        if method not in ("GET", "HEAD"):
            raise Refused(405, f"{method} not allowed here")
        if name not in STATIC:
            raise Refused(404, f"no file {name}")
        return Answer(200, [self._static[name]], STATIC[name])

    def _error(self, status: int, message: str, environ: Environ) -> Answer:
        title, main = pages.error_page(status, message)
        body = pages.frame(title, main, section="", who=None, csrf=None, live=None, version=None)
        return Answer(status, [body])

    # -- actions --------------------------------------------------------------------------

    def _post(
        self, path: str, form: Mapping[str, str], visitor: Visitor, environ: Environ
    ) -> Answer:
        if path == "/logout":
            with self._lock:
                self._logins.pop(visitor.sid, None)
            fresh = Visitor(None, secrets.token_urlsafe(32), True)
            return _redirect("/", self._cookie(fresh, environ))
        found = re.fullmatch(r"/jobs/(\d+)/(kill|reschedule)", path)
        if not found:
            raise Refused(404, f"no action {path}")
        job_id, action = int(found.group(1)), found.group(2)
        job = self.store.job(job_id)
        if not self._may_act(visitor, job):
            raise Refused(403, f"only the job's owner may {action} job {job_id}")
        result = self.store.kill(job_id) if action == "kill" else self.store.reschedule(job_id)
        log.info("monitor: job %d %s by %s", job_id, result, visitor.identity or "local user")
        return _redirect(f"/jobs/{job_id}?" + _query(result=result))

    def _may_act(self, visitor: Visitor, job: Mapping[str, Any]) -> bool:
        return may_act(visitor.identity, job, self._open)

    # -- who is asking --------------------------------------------------------------------

    @property
    def _open(self) -> bool:
        return not self.auth.pilot_tokens and not self.auth.user_tokens

    def _visitor(self, environ: Environ) -> Visitor | None:
        sid = _cookie_sid(environ)
        known = sid is not None
        sid = sid or secrets.token_urlsafe(32)
        peer = environ.get("stub.peer_identity")
        if peer:
            return Visitor(str(peer), sid, not known)
        if self._open:
            return Visitor(None, sid, not known)
        scheme, _, token = str(environ.get("HTTP_AUTHORIZATION", "")).partition(" ")
        if scheme.lower() == "bearer" and token:
            if any(hmac.compare_digest(token, good) for good in self.auth.user_tokens):
                return Visitor("user-token", sid, not known)
            raise Refused(403, "token not accepted for the monitor (a user token is needed)")
        with self._lock:
            login = self._logins.get(sid)
            if login is not None and login[1] < time.time():
                del self._logins[sid]
                login = None
        if login is None:
            return None
        return Visitor(login[0], sid, False)

    def _login(self, environ: Environ, method: str) -> Answer:
        sid = _cookie_sid(environ)
        visitor = Visitor(None, sid or secrets.token_urlsafe(32), sid is None)
        if method == "GET":
            query = _parse_query(environ.get("QUERY_STRING", ""))
            return self._login_form(visitor, environ, _local(query.get("next", "/")), None)
        if method != "POST":
            raise Refused(405, f"{method} not allowed here")
        form = self._checked_form(environ, visitor)
        target = _local(form.get("next", "/"))
        token = form.get("token", "")
        if not self.auth.user_tokens:
            raise Refused(400, "this stub has no user tokens: no sign-in needed")
        if not any(hmac.compare_digest(token, good) for good in self.auth.user_tokens):
            log.warning("monitor: sign-in with a token that is not a user token")
            answer = self._login_form(visitor, environ, target, "That token is not accepted.")
            answer.status = 403
            return answer
        signed_in = Visitor("user-token", secrets.token_urlsafe(32), True)
        with self._lock:
            self._logins[signed_in.sid] = ("user-token", time.time() + SESSION_SECONDS)
            while len(self._logins) > MAX_SESSIONS:
                self._logins.popitem(last=False)
        return _redirect(target, self._cookie(signed_in, environ))

    def _login_form(
        self, visitor: Visitor, environ: Environ, target: str, error: str | None
    ) -> Answer:
        title, main = pages.login_page(self._csrf(visitor.sid), target, error)
        body = pages.frame(title, main, section="", who=None, csrf=None, live=None, version=None)
        return Answer(200, [body], headers=self._cookie(visitor, environ))

    def _csrf(self, sid: str) -> str:
        return hmac.new(self._secret, sid.encode(), hashlib.sha256).hexdigest()

    def _cookie(self, visitor: Visitor, environ: Environ) -> list[tuple[str, str]]:
        if not visitor.new_sid:
            return []
        secure = "; Secure" if _https(environ) else ""
        value = f"{COOKIE}={visitor.sid}; Path=/; HttpOnly; SameSite=Strict{secure}"
        return [("Set-Cookie", value)]

    # -- request checks -------------------------------------------------------------------

    def refuse_cross_site(self, environ: Environ) -> None:
        """For the API: a request from a web page (browsers name its origin) must come
        from this server's own pages, which are opened by address on plain HTTP. Else
        any site a user visits could submit or kill jobs on an open loopback stub."""
        origin = environ.get("HTTP_ORIGIN")
        if origin is None:  # not sent by a browser (pilots, pilot-stub, scripts)
            return
        self._check_host(environ)
        if origin != _origin(environ):
            raise Refused(403, "cross-site request refused (Origin is not this server)")

    def _check_host(self, environ: Environ) -> None:
        """On plain HTTP only an address or localhost may be named (DNS rebinding)."""
        if _https(environ):
            return
        host = str(environ.get("HTTP_HOST", ""))
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        name = name.strip("[]")
        if name == "localhost":
            return
        try:
            ipaddress.ip_address(name)
        except ValueError:
            raise Refused(
                403, "on plain HTTP open the monitor by address (http://127.0.0.1:PORT/)"
            ) from None

    def _checked_form(self, environ: Environ, visitor: Visitor) -> dict[str, str]:
        """The form of a same-origin POST that carries the session's CSRF token."""
        expected = _origin(environ)
        origin = environ.get("HTTP_ORIGIN")
        if origin is not None:
            if origin != expected:
                raise Refused(403, "cross-site request refused (Origin is not this server)")
        else:
            referer = str(environ.get("HTTP_REFERER", ""))
            if not referer.startswith(expected + "/"):
                raise Refused(403, "cross-site request refused (no same-origin Origin or Referer)")
        kind = str(environ.get("CONTENT_TYPE", "")).split(";")[0].strip()
        if kind != "application/x-www-form-urlencoded":
            raise Refused(400, "send the form as application/x-www-form-urlencoded")
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            raise Refused(400, "bad Content-Length") from None
        if length > MAX_FORM_BYTES:
            raise Refused(413, "form too large")
        raw = environ["wsgi.input"].read(length) if length > 0 else b""
        form = _parse_query(raw.decode("utf-8", "replace"))
        if visitor.new_sid or not hmac.compare_digest(
            form.get("csrf", ""), self._csrf(visitor.sid)
        ):
            raise Refused(403, "form expired or not from this site: reload the page and retry")
        return form


def job_query(query: Mapping[str, str]) -> pages.JobQuery:
    """The jobs table's parameters from the URL, each checked with a one-line reason."""
    filters = {k: query[k].strip()[:200] for k in MONITOR_FILTERS if query.get(k, "").strip()}
    sort = query.get("sort", "id")
    if sort not in MONITOR_SORTS:
        raise Refused(400, f"sort must be one of {', '.join(MONITOR_SORTS)}, not {sort!r}")
    way = query.get("dir", "desc")
    if way not in ("asc", "desc"):
        raise Refused(400, f"dir must be asc or desc, not {way!r}")
    size = _whole(query.get("size", "50"), "size", 1, max(pages.PAGE_SIZES))
    page = _whole(query.get("page", "1"), "page", 1, 10**9)
    return pages.JobQuery(filters, sort, way == "desc", page, size)


def _whole(text: str, name: str, low: int, high: int) -> int:
    try:
        number = int(text)
    except ValueError:
        number = low - 1
    if not low <= number <= high:
        raise Refused(400, f"{name} must be a whole number from {low} to {high}, not {text!r}")
    return number


def _parse_query(text: str) -> dict[str, str]:
    return {k: v[-1] for k, v in parse_qs(text, max_num_fields=50).items()}


def _query(**values: str) -> str:
    return "&".join(f"{k}={quote(v, safe='/')}" for k, v in values.items())


def _local(target: str) -> str:
    """Only a path on this server may be a redirect target; anything but printable ASCII
    in it is %-escaped (a tab would let "/<tab>/evil.example" leave the site, since
    browsers drop tabs from URLs, and a line break would end the Location header)."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return quote(target, safe="/?#[]@!$&'()*+,;=:%~")


def _redirect(location: str, headers: list[tuple[str, str]] | None = None) -> Answer:
    return Answer(303, [b""], headers=[("Location", location), *(headers or [])])


def _chunks(fh: BinaryIO) -> Iterator[bytes]:
    """The file in 1 MiB pieces, closed when the server is done with it."""
    try:
        while chunk := fh.read(1 << 20):
            yield chunk
    finally:
        fh.close()


def _version(main: Safe) -> str:
    return hashlib.sha256(main.encode()).hexdigest()[:20]


def _origin(environ: Environ) -> str:
    """This server's origin as the client named it."""
    return f"{'https' if _https(environ) else 'http'}://{environ.get('HTTP_HOST', '')}"


def _https(environ: Environ) -> bool:
    return environ.get("wsgi.url_scheme") == "https" or "stub.peer_identity" in environ


def _cookie_sid(environ: Environ) -> str | None:
    raw = environ.get("HTTP_COOKIE")
    if not raw:
        return None
    try:
        jar: SimpleCookie = SimpleCookie(str(raw))
    except CookieError:
        return None
    morsel = jar.get(COOKIE)
    if morsel is None or not re.fullmatch(r"[\w-]{32,64}", morsel.value):
        return None
    return morsel.value
