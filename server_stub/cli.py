"""``pilot-stub``: run the matcher stub, and talk to it as a DIRAC user would.

    pilot-stub serve [--host H] [--port P] [--db FILE] [--url-file PATH]
    pilot-stub submit FILE.jdl... [-f IDFILE]     JobID = N
    pilot-stub status|kill|delete|reschedule ID... [-f IDFILE]
    pilot-stub logging-info ID | peek ID | get-jdl ID | parameters ID
    pilot-stub get-output ID --dir DIR           writes DIR/ID/
    pilot-stub jobs [--status S] [--all]
    pilot-stub pilots [--log STAMP]
    pilot-stub put-file LFN PATH | get-file LFN [--dir DIR]
    pilot-stub proxy-upload [--cert FILE --key FILE] [--valid HOURS]

Every client command takes ``--json``, ``--server URL`` and ``--url-file FILE`` (the file
``serve --url-file`` wrote; also ``PILOT_SERVER`` / ``PILOT_SERVER_FILE``). Errors are
one line on stderr and a non-zero exit (see ``ExitCode``), never a traceback; commands
on several jobs report each job and fail only for the jobs that failed.
"""

from __future__ import annotations

import argparse
import difflib
import getpass
import json
import logging
import math
import os
import re
import signal
import socket
import sqlite3
import ssl
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509

from pilot import __version__, cliutil
from pilot.backends import stub as stub_client
from pilot.backends.base import InputKind, JobStatus, classify
from pilot.backends.local import local_inputs
from pilot.errors import (
    AuthError,
    CredentialError,
    ExitCode,
    PilotError,
    ServerError,
    ServerUnreachable,
    UsageError,
)
from pilot.grid import credentials
from pilot.job import jdl, outpack
from server_stub.app import AuthPolicy
from server_stub.proxies import load_trust
from server_stub.server import ServerSettings, StubServer
from server_stub.store import StoreError
from server_stub.userclient import UserClient

log = logging.getLogger("server_stub")

SQLITE_MAGIC = b"SQLite format 3\x00"


# -- argument parsing ---------------------------------------------------------------------


def _number(kind: type, low: float, high: float | None = None) -> Callable[[str], Any]:
    """An argparse type: a finite number in [low, high], with a one-line reason."""

    def convert(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            what = "a whole number" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if value < low or (high is not None and value > high):
            upper = f"..{high:g}" if high is not None else " or more"
            raise argparse.ArgumentTypeError(f"{text} is out of range: {low:g}{upper}")
        return value

    convert.__name__ = "number"
    return convert


MAX_JOB_ID = (1 << 63) - 1  # SQLite's largest integer: the stub stores no job beyond


def job_id(text: str) -> int:
    value = text.strip()
    if not value.isdecimal() or len(value) > 19 or not 1 <= int(value) <= MAX_JOB_ID:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a job id (a whole number 1..{MAX_JOB_ID})"
        )
    return int(value)


job_id.__name__ = "job id"


def _client_options() -> cliutil.Parser:
    """Options every client command takes, also before the command (``--server``...)."""
    common = cliutil.Parser(add_help=False)
    group = common.add_argument_group("server")
    group.add_argument(
        "--server",
        default=argparse.SUPPRESS,
        metavar="URL",
        help="stub URL (default: env PILOT_SERVER, else the file in PILOT_SERVER_FILE)",
    )
    group.add_argument(
        "--url-file",
        dest="read_url_file",
        type=Path,
        default=argparse.SUPPRESS,
        metavar="FILE",
        help="read the stub URL from FILE, as serve --url-file wrote it (default: none)",
    )
    group.add_argument(
        "--proxy",
        type=Path,
        default=argparse.SUPPRESS,
        metavar="FILE",
        help="client certificate/proxy for HTTPS (default: none)",
    )
    group.add_argument(
        "--token",
        default=argparse.SUPPRESS,
        help="bearer token (default: WLCG token discovery)",
    )
    group.add_argument(
        "--ca-dir",
        type=Path,
        default=argparse.SUPPRESS,
        metavar="DIR",
        help="CA directory for the server certificate (default: X509_CERT_DIR)",
    )
    group.add_argument(
        "--ca-file",
        type=Path,
        default=argparse.SUPPRESS,
        metavar="FILE",
        help="CA bundle for the server certificate (default: system CAs)",
    )
    group.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug log"
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _client_options()
    parser = cliutil.Parser(
        prog="pilot-stub",
        description="Matcher stub for pilot-agent, and its user commands",
        epilog=cliutil.exit_codes_epilog(),
        formatter_class=cliutil.HelpFormatter,
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"pilot-stub {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary: str, client: bool = True) -> argparse.ArgumentParser:
        made: argparse.ArgumentParser = sub.add_parser(
            name,
            help=summary,
            description=summary,
            parents=[common] if client else [],
            formatter_class=cliutil.HelpFormatter,
        )
        if client:
            made.add_argument("--json", action="store_true", help="print JSON (default: text)")
        return made

    def ids(cmd: argparse.ArgumentParser) -> None:
        cmd.add_argument("ids", nargs="*", type=job_id, metavar="ID", help="job ids")
        cmd.add_argument(
            "-f",
            "--file",
            dest="id_file",
            type=Path,
            metavar="FILE",
            help="also the job ids in FILE, one or more a line, # comments (default: none)",
        )

    _serve_parser(command("serve", "run the stub", client=False))
    submit = command("submit", "submit JDL files (local input files are uploaded)")
    submit.add_argument("jdl", nargs="+", type=Path, metavar="FILE.jdl", help="job descriptions")
    submit.add_argument(
        "-f",
        "--file",
        dest="id_file",
        type=Path,
        metavar="FILE",
        help="append the new job ids to FILE (default: none)",
    )
    ids(command("status", "status of jobs"))
    ids(command("kill", "kill jobs (now if not running, else through the pilot)"))
    ids(command("delete", "delete jobs (killed first if running)"))
    ids(command("reschedule", "put ended jobs back to Waiting"))
    logging_info = command("logging-info", "status history and timing of a job")
    logging_info.add_argument("id", type=job_id, metavar="ID", help="job id")
    peek = command("peek", "last lines of a running job's output (from its heartbeats)")
    peek.add_argument("id", type=job_id, metavar="ID", help="job id")
    peek.add_argument(
        "-n",
        "--lines",
        type=_number(int, 1),
        default=20,
        metavar="N",
        help="at most N lines (default: 20)",
    )
    command("get-jdl", "the JDL a job was stored with").add_argument(
        "id", type=job_id, metavar="ID", help="job id"
    )
    command("parameters", "what the pilot reported about a job (host, CPU, timing)").add_argument(
        "id", type=job_id, metavar="ID", help="job id"
    )
    out = command("get-output", "fetch a job's output sandbox into DIR/ID/")
    out.add_argument("id", type=job_id, metavar="ID", help="job id")
    out.add_argument(
        "--dir", type=Path, default=Path("."), metavar="DIR", help="parent directory (default: .)"
    )
    jobs = command("jobs", "list jobs (Deleted ones only with --all or --status Deleted)")
    jobs.add_argument("--status", metavar="STATUS", help="only jobs in STATUS (default: all)")
    jobs.add_argument("--all", action="store_true", help="include Deleted jobs")
    pilots = command("pilots", "list pilots and their checks")
    pilots.add_argument(
        "--log", metavar="STAMP", help="print that pilot's uploaded log (default: list the pilots)"
    )
    put = command("put-file", "store a file in the catalogue under an LFN")
    put.add_argument("lfn", metavar="LFN", help="LFN:/vo/path or /vo/path")
    put.add_argument("path", type=Path, metavar="PATH", help="local file")
    get = command("get-file", "fetch a catalogue file (e.g. a job's OutputData)")
    get.add_argument("lfn", metavar="LFN", help="LFN:/vo/path or /vo/path")
    get.add_argument(
        "--dir", type=Path, default=Path("."), metavar="DIR", help="where to write (default: .)"
    )
    upload = command("proxy-upload", "store a proxy of yours on the stub, for your jobs' payloads")
    upload.description = (
        "Sign a proxy for a key the stub makes (no private key is sent) with your certificate"
        " (--cert/--key, X509_USER_CERT/KEY, ~/.globus) or, with --proxy, with that proxy."
        " Pilots get proxies delegated from it for each of your jobs."
    )
    upload.add_argument(
        "--cert", type=Path, metavar="FILE", help="user certificate, PEM (default: see above)"
    )
    upload.add_argument(
        "--key",
        type=Path,
        metavar="FILE",
        help="user private key, PEM, may be encrypted (default: see above)",
    )
    upload.add_argument(
        "--valid",
        type=float,
        default=168.0,
        metavar="HOURS",
        help="lifetime (default: %(default)g h, at most 8784)",
    )
    return parser


def _serve_parser(serve: argparse.ArgumentParser) -> None:
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s)"
    )
    serve.add_argument(
        "--port",
        type=_number(int, 0, 65535),
        default=0,
        help="port (default: 0, a free one; the URL is printed)",
    )
    serve.add_argument(
        "--db", type=Path, metavar="FILE", help="SQLite file (default: a temporary one)"
    )
    serve.add_argument(
        "--sandbox-dir",
        type=Path,
        metavar="DIR",
        help="sandbox store (default: beside the database)",
    )
    serve.add_argument(
        "--url-file",
        type=Path,
        metavar="FILE",
        help="also write the base URL to FILE (default: none)",
    )
    serve.add_argument(
        "--max-sandbox-mb",
        type=_number(int, 1),
        default=10240,
        metavar="MB",
        help="largest sandbox accepted (default: %(default)s MB)",
    )
    serve.add_argument(
        "--max-parametric",
        type=_number(int, 1),
        default=1000,
        metavar="N",
        help="most jobs one parametric JDL may expand to (default: %(default)s)",
    )
    serve.add_argument(
        "--stalled-after",
        type=_number(float, 0.1),
        default=900.0,
        metavar="S",
        help="seconds without heartbeat before a job is Stalled (default: %(default)s)",
    )
    serve.add_argument(
        "--reap-interval",
        type=_number(float, 0.1, 3600),  # a wait past threading.TIMEOUT_MAX ended the reaper
        default=30.0,
        metavar="S",
        help="seconds between stalled-job sweeps (default: %(default)s)",
    )
    serve.add_argument(
        "--max-reschedules",
        type=_number(int, 0),
        default=3,
        metavar="N",
        help="times a stalled job is put back to Waiting (default: %(default)s)",
    )
    serve.add_argument("--insecure", action="store_true", help="allow plain HTTP off loopback")
    serve.add_argument(
        "--workers",
        type=_number(int, 1, 1024),
        default=16,
        metavar="N",
        help="threads serving requests (default: %(default)s)",
    )
    serve.add_argument(
        "--max-connections",
        type=_number(int, 1, 100_000),
        default=1000,
        metavar="N",
        help="open client connections; beyond, the idlest is closed or new ones wait"
        " (default: %(default)s)",
    )
    serve.add_argument(
        "--keepalive-timeout",
        type=_number(float, 0.001, 3600),
        default=30.0,
        metavar="S",
        help="seconds an idle client connection is kept open (default: %(default)s)",
    )
    serve.add_argument("-v", "--verbose", action="store_true", help="debug log")
    tls = serve.add_argument_group("security")
    tls.add_argument(
        "--cert",
        type=Path,
        metavar="FILE",
        help="server certificate, PEM, key inside or --key (default: none, plain HTTP)",
    )
    tls.add_argument(
        "--key", type=Path, metavar="FILE", help="server private key (default: in the --cert file)"
    )
    tls.add_argument(
        "--require-client-cert",
        action="store_true",
        help="refuse clients without a certificate (proxies accepted)",
    )
    tls.add_argument(
        "--pilot-token-file",
        type=Path,
        metavar="FILE",
        help="bearer tokens for pilots, one a line (default: none)",
    )
    tls.add_argument(
        "--user-token-file",
        type=Path,
        metavar="FILE",
        help="bearer tokens for users, one a line (default: none)",
    )
    tls.add_argument(
        "--ca-dir",
        type=Path,
        metavar="DIR",
        help=(
            "CA directory (hash links) for client certificates (default: system CAs)"
            " and uploaded proxies (default: uploads refused)"
        ),
    )
    tls.add_argument(
        "--ca-file",
        type=Path,
        metavar="FILE",
        help="CA bundle for client certificates and uploaded proxies (default: none)",
    )


# -- main ---------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    return cliutil.guarded(lambda: _main(argv))


def _main(argv: Sequence[str] | None) -> int:
    args = cliutil.parse(build_parser(), argv)
    if isinstance(args, int):
        return args
    verbose = getattr(args, "verbose", False)
    quiet = logging.INFO if args.command == "serve" else logging.ERROR
    logging.basicConfig(
        level=logging.DEBUG if verbose else quiet,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
        stream=sys.stderr,
    )
    progress = None
    if args.command != "serve" and not verbose and sys.stderr.isatty():
        logging.getLogger("pilot.job.outpack").setLevel(logging.INFO)  # "packing N files"
        progress = stub_client.progress_hook = cliutil.TerminalProgress(sys.stderr)

    def say(text: str) -> None:
        if progress is not None:
            progress.end_line()  # a transfer's progress line, cut short by this error
        print(f"pilot-stub: {text}", file=sys.stderr)

    try:
        if args.command == "serve":
            return serve(args)
        args.issuer = upload_issuer(args) if args.command == "proxy-upload" else None
        with user_client(args, args.issuer) as client:
            return run_client_command(client, args)
    except PilotError as exc:
        message = _reason(exc) if refused(exc) else str(exc)
        job = getattr(args, "id", None)
        about = f"job {job}: " if refused(exc) and isinstance(job, int) else ""
        say(f"{about}{message}")
        return exit_code(exc)
    except BrokenPipeError:
        raise
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        say(f"{exc.strerror or exc}{where}")
        return int(ExitCode.USAGE)
    except KeyboardInterrupt:
        return int(ExitCode.SIGNALLED)


def refused(exc: PilotError) -> bool:
    """The stub said no to this request (no such job, already ended...): other requests
    may still work, unlike a wrong URL, an unreachable server or refused credentials."""
    return exit_code(exc) != int(exc.exit_code)


def exit_code(exc: PilotError) -> int:
    """A request the stub refused because of what was asked (no such job, already ended)
    is the user's mistake: usage (2), not a server error."""
    if (
        isinstance(exc, ServerError)
        and not isinstance(exc, AuthError | ServerUnreachable)
        and exc.status is not None
        and 400 <= exc.status < 500
    ):
        return int(ExitCode.JDL_INVALID if "invalid JDL" in str(exc) else ExitCode.USAGE)
    return int(exc.exit_code)


def server_url(args: argparse.Namespace) -> str:
    """--server, --url-file, PILOT_SERVER, PILOT_SERVER_FILE: the first given, checked."""
    if getattr(args, "server", None) is not None:
        return cliutil.check_server_url(args.server, "--server")
    url_file = getattr(args, "read_url_file", None)
    where = "--url-file"
    if url_file is None and os.environ.get("PILOT_SERVER"):
        return cliutil.check_server_url(os.environ["PILOT_SERVER"], "PILOT_SERVER")
    if url_file is None and os.environ.get("PILOT_SERVER_FILE"):
        url_file, where = Path(os.environ["PILOT_SERVER_FILE"]), "PILOT_SERVER_FILE"
    if url_file is None:
        raise UsageError(
            "no server: give --server URL or --url-file FILE, or set PILOT_SERVER"
            " or PILOT_SERVER_FILE"
        )
    try:
        text = url_file.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not a text file"
        raise UsageError(f"{where} {url_file}: {reason or exc}") from None
    return cliutil.check_server_url(text, f"{where} {url_file}:")


def user_client(args: argparse.Namespace, issuer: credentials.Proxy | None = None) -> UserClient:
    url = server_url(args)
    token = getattr(args, "token", None)
    if token is None:
        found = credentials.find_token()
        token = found.value if found is not None else None
    verify: ssl.SSLContext | bool = True
    if url.startswith("https://"):
        proxy_path = getattr(args, "proxy", None)
        proxy = credentials.load_proxy(proxy_path) if proxy_path else issuer
        if proxy is not None:
            credentials.validate(proxy)  # expired: said here, not as the server's TLS alert
        verify = credentials.ssl_context(
            proxy, getattr(args, "ca_dir", None), getattr(args, "ca_file", None)
        )
    return UserClient(url, verify=verify, bearer=token)


# -- serve --------------------------------------------------------------------------------


def _tokens(path: Path | None) -> frozenset[str]:
    if path is None:
        return frozenset()
    return frozenset(line.strip() for line in path.read_text().splitlines() if line.strip())


def server_security(args: argparse.Namespace) -> tuple[ssl.SSLContext | None, AuthPolicy]:
    auth = AuthPolicy(_tokens(args.pilot_token_file), _tokens(args.user_token_file))
    if args.cert is None:
        if args.require_client_cert:
            raise UsageError("--require-client-cert needs --cert (HTTPS)")
        if args.key is not None:
            raise UsageError("--key needs --cert")
        return None, auth
    ctx = credentials.server_ssl_context(
        args.cert, args.key, args.ca_dir, args.ca_file, require_client_cert=args.require_client_cert
    )
    return ctx, auth


def proxy_trust(args: argparse.Namespace) -> tuple[x509.Certificate, ...]:
    """The CAs of --ca-dir/--ca-file, which uploaded proxies must lead to (none: the stub
    refuses every upload, see README "The payload's own proxy")."""
    try:
        return load_trust(args.ca_dir, args.ca_file)
    except CredentialError as exc:
        raise UsageError(str(exc)) from None


def _check_db(path: Path) -> None:
    """The database path is a SQLite file or nothing yet, in an existing directory."""
    if path.is_dir():
        raise UsageError(f"--db {path}: is a directory; give a file name")
    if not path.parent.is_dir():
        raise UsageError(f"--db {path}: no directory {path.parent}")
    if path.exists():
        try:
            with path.open("rb") as fh:
                head = fh.read(len(SQLITE_MAGIC))
        except OSError as exc:
            raise UsageError(f"--db {path}: {exc.strerror or exc}") from None
        if head and head != SQLITE_MAGIC:
            raise UsageError(f"--db {path}: not a SQLite database (refusing to overwrite it)")


def serve(args: argparse.Namespace) -> int:
    tmp = None
    if args.db is None:
        tmp = tempfile.TemporaryDirectory(prefix="pilot-stub-")
        args.db = Path(tmp.name) / "stub.db"
    _check_db(args.db)
    sandbox_dir = args.sandbox_dir or args.db.parent / (args.db.name + ".sandboxes")
    if sandbox_dir.exists() and not sandbox_dir.is_dir():
        raise UsageError(f"--sandbox-dir {sandbox_dir}: not a directory")
    if args.url_file is not None and not args.url_file.parent.is_dir():
        raise UsageError(f"--url-file {args.url_file}: no directory {args.url_file.parent}")
    if args.url_file is not None and args.url_file.is_dir():
        raise UsageError(f"--url-file {args.url_file}: is a directory; give a file name")
    ssl_context, auth = server_security(args)
    settings = ServerSettings(
        db=args.db,
        sandbox_dir=sandbox_dir,
        host=args.host,
        port=args.port,
        max_sandbox_bytes=args.max_sandbox_mb << 20,
        max_parametric=args.max_parametric,
        stalled_after=args.stalled_after,
        reap_interval=args.reap_interval,
        max_reschedules=args.max_reschedules,
        insecure=args.insecure,
        workers=args.workers,
        max_connections=args.max_connections,
        keepalive_timeout=args.keepalive_timeout,
        ssl_context=ssl_context,
        auth=auth,
        proxy_cas=proxy_trust(args),
    )
    try:
        server = StubServer(settings)
    except ValueError as exc:  # plain HTTP off loopback
        raise UsageError(str(exc)) from None
    except socket.gaierror as exc:
        raise UsageError(f"--host {args.host}: {exc.strerror or exc}") from None
    except (sqlite3.DatabaseError, StoreError) as exc:  # not a database, in use...
        raise UsageError(f"--db {args.db}: {exc}") from None
    except OSError as exc:
        if exc.filename:  # the sandbox directory or the database
            raise UsageError(f"{exc.filename}: {exc.strerror or exc}") from None
        where = f"{args.host}:{args.port}"
        raise UsageError(f"cannot listen on {where}: {exc.strerror or exc}") from None
    server.start()
    if args.url_file:
        # whole or not at all: a client polling for the file never reads it half written
        part = args.url_file.with_name(f".{args.url_file.name}.part")
        part.write_text(server.url + "\n")
        os.replace(part, args.url_file)
    print(server.url, flush=True)
    log.info("matcher stub listening on %s (database %s)", server.url, settings.db)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    log.info("stopping")
    server.stop()
    if tmp is not None:
        tmp.cleanup()
    return 0


# -- client commands ----------------------------------------------------------------------


def run_client_command(client: UserClient, args: argparse.Namespace) -> int:
    command: Callable[[UserClient, argparse.Namespace], int] = COMMANDS[args.command]
    return command(client, args)


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2, default=str) if args.json else text)


def cmd_submit(client: UserClient, args: argparse.Namespace) -> int:
    """Each file's ids are said (and appended to ``-f FILE``) as soon as it is submitted,
    so that a later file's mistake loses none of them; with ``--json``, the list of the
    files submitted so far is printed whatever happens."""
    rows = []
    ids_out = None
    if args.id_file is not None:  # opened before anything is submitted: a bad path costs none
        try:
            ids_out = args.id_file.open("a")
        except OSError as exc:
            raise UsageError(f"-f {args.id_file}: {exc.strerror or exc}") from None
    try:
        for path in args.jdl:
            ids = submit_file(client, path)
            rows.append({"file": str(path), "JobID": ids})
            if not args.json:
                print(f"JobID = {ids[0]}" if len(ids) == 1 else f"JobID = {ids}", flush=True)
            if ids_out is not None:
                ids_out.writelines(f"{i}\n" for i in ids)
                ids_out.flush()
    finally:
        if ids_out is not None:
            ids_out.close()
        if args.json:
            print(json.dumps(rows, indent=2))
    return 0


def submit_file(client: UserClient, path: Path) -> list[int]:
    """Submit one JDL file: pack its local input sandbox, upload it, send the JDL.

    A JDL mistake, found here or by the stub, names the file once (``FILE:LINE:COL:``)."""
    try:
        attrs = jdl.parse(path.read_bytes())
        desc = jdl.JobDescription.from_attrs(attrs) if _has_exe(attrs) else None
    except jdl.JDLError as exc:
        where = f"{path}:{exc}" if exc.line is not None else f"{path}: {exc}"
        raise jdl.JDLError(where) from None  # the location is in the text, said once
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror or exc}") from None
    entries = desc.input_sandbox if desc is not None else ()
    files = local_inputs(path, tuple(entries))
    if files:
        with tempfile.TemporaryDirectory() as tmp:
            packed = Path(tmp) / "sandbox.tar.gz"
            outpack.pack_files(files, packed)
            sha = client.put_sandbox(packed)
        key = next(k for k in attrs if k.lower() == "inputsandbox")
        remote = (e for e in entries if classify(e) is not InputKind.LOCAL)
        attrs[key] = [*remote, f"SB:{sha}"]
    try:
        return client.submit(jdl.dumps(attrs))
    except ServerError as exc:
        if exc.status == 400 and "invalid JDL: " in str(exc):
            raise jdl.JDLError(f"{path}: {str(exc).split('invalid JDL: ', 1)[1]}") from None
        raise


def _has_exe(attrs: dict[str, jdl.Value]) -> bool:
    return jdl.get(attrs, "Executable") is not None


def job_ids(args: argparse.Namespace) -> list[int]:
    """The ids on the command line, then those in ``-f FILE``; at least one."""
    found = list(args.ids)
    if args.id_file is not None:
        try:
            text = args.id_file.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not a text file"
            raise UsageError(f"-f {args.id_file}: {reason or exc}") from None
        for number, line in enumerate(text.splitlines(), 1):
            for word in line.split("#")[0].replace(",", " ").split():
                try:
                    found.append(job_id(word))
                except argparse.ArgumentTypeError as exc:
                    raise UsageError(f"-f {args.id_file}:{number}: {exc}") from None
    if not found:
        raise UsageError(f"{args.command}: give job ids, or -f FILE")
    return list(dict.fromkeys(found))


def _reason(exc: PilotError) -> str:
    """What the stub said, without the request line: ``not found``, ``is already Done``."""
    text = str(exc)
    found = re.match(r"^[A-Z]+ /\S*: \d{3} (.*)$", text)
    reason = found.group(1) if found else text
    if re.fullmatch(r"no job \d+", reason):
        return "no such job"
    return re.sub(r"^job \d+ ", "", reason)


def per_job(
    args: argparse.Namespace, action: Callable[[int], dict[str, Any]]
) -> tuple[list[dict[str, Any]], int]:
    """Run ``action`` for every id; failures are reported one line each, the rest go on.
    Returns the successes and the exit code (that of the first failure, else 0)."""
    done: list[dict[str, Any]] = []
    code = 0
    for jid in job_ids(args):
        try:
            done.append(action(jid))
        except PilotError as exc:
            if not refused(exc):
                raise  # nothing else will work either
            print(f"pilot-stub: job {jid}: {_reason(exc)}", file=sys.stderr)
            code = code or exit_code(exc)
    return done, code


JOB_COLUMNS = (
    ("JobID", "job_id"),
    ("JobName", "job_name"),
    ("Status", "status"),
    ("MinorStatus", "minor_status"),
    ("ApplicationStatus", "application_status"),
    ("Site", "site"),
)


def jobs_table(jobs: list[dict[str, Any]]) -> str:
    rows = [[job.get(key) for _, key in JOB_COLUMNS] for job in jobs]
    return cliutil.table([title for title, _ in JOB_COLUMNS], rows, right=(0,))


def cmd_status(client: UserClient, args: argparse.Namespace) -> int:
    jobs, code = per_job(args, client.job)
    if jobs or args.json:
        _emit(args, jobs, jobs_table(jobs))
    return code


def job_status(text: str) -> str:
    """A job status as DIRAC spells it (any case); a misspelt one is refused."""
    known = {status.value.lower(): status.value for status in JobStatus}
    found = known.get(text.strip().lower())
    if found is None:
        close = difflib.get_close_matches(text.capitalize(), known.values(), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UsageError(f"--status {text}: no such status{hint} ({', '.join(known.values())})")
    return found


def cmd_jobs(client: UserClient, args: argparse.Namespace) -> int:
    if args.status is not None:
        args.status = job_status(args.status)
    jobs = client.jobs(args.status)
    if not args.all and args.status is None:
        jobs = [j for j in jobs if j["status"] != "Deleted"]
    _emit(args, jobs, jobs_table(jobs) if jobs else "no jobs")
    return 0


def cmd_kill(client: UserClient, args: argparse.Namespace) -> int:
    """kill, delete and reschedule: one result line per job."""
    calls = {"kill": client.kill, "delete": client.delete, "reschedule": client.reschedule}
    call = calls[args.command]
    done, code = per_job(args, lambda jid: {"JobID": jid, "result": call(jid)})
    if args.json:
        print(json.dumps(done, indent=2))
    else:
        for row in done:
            print(f"job {row['JobID']}: {row['result']}")
    return code


def cmd_logging_info(client: UserClient, args: argparse.Namespace) -> int:
    rows = client.logging_info(args.id)
    job = client.job(args.id)
    if args.json:
        print(json.dumps({"history": rows, "timing": job.get("timing")}, indent=2))
        return 0
    table = [
        [when(r["Timestamp"]), r["Status"], r["MinorStatus"], r["ApplicationStatus"], r["Source"]]
        for r in rows
    ]
    print(
        cliutil.table(["Time (UTC)", "Status", "MinorStatus", "ApplicationStatus", "Source"], table)
    )
    timing = job.get("timing")
    if timing:
        print("timing: " + ", ".join(f"{k} {v:.3f} s" for k, v in timing.items()))
    return 0


def when(stamp: float | None) -> str:
    if stamp is None:
        return "-"
    return datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%d %H:%M:%S")


def cmd_peek(client: UserClient, args: argparse.Namespace) -> int:
    job = client.job(args.id)
    text = str((job.get("heartbeat") or {}).get("StandardOutput") or "")
    lines = text.splitlines()[-args.lines :]
    if args.json:
        print(json.dumps({"JobID": args.id, "status": job["status"], "lines": lines}, indent=2))
    elif lines:
        print("\n".join(lines))
    else:
        print(f"job {args.id} ({job['status']}): no output reported yet", file=sys.stderr)
    return 0


def cmd_get_jdl(client: UserClient, args: argparse.Namespace) -> int:
    text = client.get_jdl(args.id)
    _emit(args, {"JobID": args.id, "jdl": text}, text.rstrip("\n"))
    return 0


def job_parameters(client: UserClient, jid: int) -> dict[str, Any]:
    """What the pilot reported about a job: where it ran, on what, and how it went."""
    job = client.job(jid)
    params: dict[str, Any] = {
        "JobID": jid,
        "JobName": job.get("job_name"),
        "Status": job["status"],
        "Owner": job.get("owner"),
        "Site": job.get("site"),
        "PilotReference": job.get("pilot"),
        "Submitted": when(job.get("submitted")),
        "LastUpdate": when(job.get("updated")),
        "Reschedules": job.get("reschedules"),
    }
    pilot = next((p for p in client.pilots() if p.get("stamp") == job.get("pilot")), None)
    if pilot is not None:
        resources = pilot.get("resources", {})
        batch = pilot.get("batch", {})
        params.update(
            {
                "HostName": pilot.get("host"),
                "GridCE": resources.get("GridCE"),
                "BatchSystem": batch.get("system"),
                "BatchJobID": batch.get("job_id"),
                "NumberOfProcessors": resources.get("NumberOfProcessors"),
                "CPUNormalizationFactor": resources.get("PilotBenchmark"),
                "Platform": resources.get("Platform"),
                "PilotVersion": pilot.get("version"),
            }
        )
    heartbeat = dict(job.get("heartbeat") or {})
    heartbeat.pop("StandardOutput", None)
    params.update(heartbeat)
    for key, value in (job.get("timing") or {}).items():
        params[f"Timing.{key}"] = round(float(value), 3)
    return {k: v for k, v in params.items() if v is not None}


def cmd_parameters(client: UserClient, args: argparse.Namespace) -> int:
    params = job_parameters(client, args.id)
    _emit(args, params, cliutil.table(["Parameter", "Value"], list(params.items())))
    return 0


def cmd_get_output(client: UserClient, args: argparse.Namespace) -> int:
    target = args.dir / str(args.id)
    names = client.get_output(args.id, target)
    _emit(
        args,
        {"JobID": args.id, "dir": str(target), "files": names},
        f"{len(names)} file(s) in {target}",
    )
    return 0


def lfn_of(text: str) -> str:
    """``LFN:/vo/x`` as given, or ``/vo/x`` made into one; anything else is refused,
    and so are paths that name no file (``/``, ``/vo/..``, ``/vo/``) and ``?`` or ``#``,
    which the stub's URL would cut off (the file would be stored under another name)."""
    path = text.removeprefix("LFN:")
    parts = path.split("/")
    if not path.startswith("/") or any(p in ("", ".", "..") for p in parts[1:]):
        raise UsageError(f"{text!r} is not an LFN: write LFN:/vo/path or /vo/path")
    if "?" in path or "#" in path:
        raise UsageError(f"{text!r}: an LFN here may not hold '?' or '#'")
    return "LFN:" + path


def cmd_put_file(client: UserClient, args: argparse.Namespace) -> int:
    lfn = lfn_of(args.lfn)
    if not args.path.is_file():
        raise UsageError(f"{args.path}: no such file")
    sha = client.put_file(lfn, args.path)
    _emit(args, {"lfn": lfn, "sha256": sha}, f"{lfn} {sha}")
    return 0


def cmd_get_file(client: UserClient, args: argparse.Namespace) -> int:
    lfn = lfn_of(args.lfn)
    if args.dir.exists() and not args.dir.is_dir():
        raise UsageError(f"--dir {args.dir}: not a directory")
    args.dir.mkdir(parents=True, exist_ok=True)
    dest = args.dir / lfn.rstrip("/").rsplit("/", 1)[-1]
    size = client.get_file(lfn, dest)
    _emit(args, {"lfn": lfn, "path": str(dest), "size": size}, f"{lfn} -> {dest} ({size} bytes)")
    return 0


PILOT_STAMP = re.compile(r"[\w.:@-]{1,128}")  # as the stub's route for a pilot's log takes it


def cmd_pilots(client: UserClient, args: argparse.Namespace) -> int:
    if args.log is not None and not PILOT_STAMP.fullmatch(args.log):
        raise UsageError(f"--log {args.log!r}: not a pilot stamp (see pilot-stub pilots)")
    if args.log:
        text = client.pilot_log(args.log)
        _emit(args, {"stamp": args.log, "log": text}, text.rstrip("\n"))
        return 0
    pilots = client.pilots()
    if args.json:
        print(json.dumps(pilots, indent=2))
        return 0
    if not pilots:
        print("no pilots")
    for pilot in pilots:
        checks = pilot.get("checks", {}).get("results", [])
        fit = "fit" if pilot.get("checks", {}).get("ok", True) else "NOT FIT"
        print(
            f"{pilot['stamp']}  {when(pilot['registered'])}  site {pilot.get('site', '-')}  {fit}"
        )
        rows = [[c["name"], c["status"], c["message"]] for c in checks]
        if rows:
            table = cliutil.table(["Check", "Status", "Message"], rows)
            print("\n".join("    " + line for line in table.splitlines()))
    return 0


def upload_issuer(args: argparse.Namespace) -> credentials.Proxy:
    """What signs the uploaded proxy: --proxy, else the user certificate and key."""
    if not math.isfinite(args.valid) or args.valid <= 0 or args.valid > 24 * 366:
        raise UsageError(f"--valid {args.valid:g}: give a number of hours between 0 and 8784")
    proxy_path = getattr(args, "proxy", None)
    if proxy_path and not (args.cert or args.key):
        proxy = credentials.load_proxy(proxy_path)
        credentials.validate(proxy)
        return proxy
    home = Path.home() / ".globus"
    cert = args.cert or Path(os.environ.get("X509_USER_CERT") or home / "usercert.pem")
    key = args.key or Path(os.environ.get("X509_USER_KEY") or home / "userkey.pem")
    passphrase = None
    if credentials.key_is_encrypted(key):
        if sys.stdin.isatty():
            passphrase = getpass.getpass(f"Passphrase for {key}: ").encode()
        else:
            passphrase = sys.stdin.readline().rstrip("\n").encode()
    user = credentials.issuer_as_proxy(credentials.load_user_credential(cert, key, passphrase))
    credentials.validate(user)
    return user


def cmd_proxy_upload(client: UserClient, args: argparse.Namespace) -> int:
    try:
        stored = client.proxy_upload(args.issuer, timedelta(hours=args.valid))
    except AuthError as exc:
        if exc.status != 403:
            raise
        # the stub refused this proxy (untrusted CA, someone else's, a token caller):
        # its one-line reason, without the request line and its one-time request id
        raise AuthError(_reason(exc), exc.status) from None
    until = when(stored["not_after"])
    _emit(
        args,
        {"identity": stored["identity"], "not_after": stored["not_after"]},
        f"proxy of {stored['identity']} stored, valid until {until} UTC",
    )
    return 0


COMMANDS: dict[str, Callable[[UserClient, argparse.Namespace], int]] = {
    "submit": cmd_submit,
    "status": cmd_status,
    "jobs": cmd_jobs,
    "kill": cmd_kill,
    "delete": cmd_kill,
    "reschedule": cmd_kill,
    "logging-info": cmd_logging_info,
    "peek": cmd_peek,
    "get-jdl": cmd_get_jdl,
    "parameters": cmd_parameters,
    "get-output": cmd_get_output,
    "put-file": cmd_put_file,
    "get-file": cmd_get_file,
    "pilots": cmd_pilots,
    "proxy-upload": cmd_proxy_upload,
}
