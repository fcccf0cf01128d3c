"""``pilot-stub``: run the matcher stub, and talk to it as a user would.

    pilot-stub serve [--host H] [--port P] [--db FILE] [--url-file PATH]
    pilot-stub submit FILE.jdl...          one job id per line
    pilot-stub status ID... [--json]
    pilot-stub logging-info ID
    pilot-stub get-output ID --dir DIR     writes DIR/ID/
    pilot-stub kill ID | delete ID
    pilot-stub jobs [--status S] [--json]
    pilot-stub pilots [--json] [--log STAMP]
    pilot-stub put-file LFN PATH
    pilot-stub proxy-upload [--cert FILE --key FILE] [--valid HOURS]

Errors are one line on stderr and a non-zero exit (see ``ExitCode``), never a traceback.
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import signal
import ssl
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pilot.backends.local import REMOTE_PREFIXES, local_inputs
from pilot.errors import ExitCode, PilotError, UsageError
from pilot.grid import credentials
from pilot.job import jdl, outpack
from server_stub.app import AuthPolicy
from server_stub.server import ServerSettings, StubServer
from server_stub.userclient import UserClient

log = logging.getLogger("server_stub")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pilot-stub", description="Matcher stub for pilot-agent")
    parser.add_argument("--server", default=os.environ.get("PILOT_SERVER"), help="stub URL")
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--proxy", type=Path, help="client certificate/proxy for HTTPS")
    parser.add_argument("--token", help="bearer token (default: WLCG token discovery)")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the stub")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=0)
    serve.add_argument("--db", type=Path, help="SQLite file (default: a temporary one)")
    serve.add_argument("--sandbox-dir", type=Path, help="default: beside the database")
    serve.add_argument("--url-file", type=Path, help="also write the base URL here")
    serve.add_argument("--max-sandbox-mb", type=int, default=10240)
    serve.add_argument("--max-parametric", type=int, default=1000)
    serve.add_argument(
        "--stalled-after",
        type=float,
        default=900.0,
        help="seconds without heartbeat before a job is Stalled",
    )
    serve.add_argument("--reap-interval", type=float, default=30.0)
    serve.add_argument("--max-reschedules", type=int, default=3)
    serve.add_argument("--insecure", action="store_true", help="allow plain HTTP off loopback")
    serve.add_argument(
        "--workers", type=_positive(int), default=16, help="threads serving requests"
    )
    serve.add_argument(
        "--max-connections",
        type=_positive(int),
        default=1000,
        help="open client connections; beyond, the idlest is closed or new ones wait",
    )
    serve.add_argument(
        "--keepalive-timeout",
        type=_positive(float),
        default=30.0,
        help="seconds an idle client connection is kept open",
    )
    tls = serve.add_argument_group("security")
    tls.add_argument("--cert", type=Path, help="server certificate (PEM; key inside or --key)")
    tls.add_argument("--key", type=Path, help="server private key")
    tls.add_argument(
        "--require-client-cert",
        action="store_true",
        help="refuse clients without a certificate (proxies accepted)",
    )
    tls.add_argument("--pilot-token-file", type=Path, help="bearer tokens for pilots, one a line")
    tls.add_argument("--user-token-file", type=Path, help="bearer tokens for users, one a line")
    for group in (parser, tls):
        group.add_argument(
            "--ca-dir",
            type=Path,
            default=argparse.SUPPRESS,
            help="CA directory (hash links) for peer certificates",
        )
        group.add_argument("--ca-file", type=Path, default=argparse.SUPPRESS, help="CA bundle")

    sub.add_parser("submit", help="submit JDL files").add_argument("jdl", nargs="+", type=Path)
    status = sub.add_parser("status", help="job status")
    status.add_argument("ids", nargs="+", type=int)
    status.add_argument("--json", action="store_true")
    sub.add_parser("logging-info", help="status history").add_argument("id", type=int)
    out = sub.add_parser("get-output", help="fetch the output sandbox")
    out.add_argument("id", type=int)
    out.add_argument("--dir", type=Path, default=Path("."))
    sub.add_parser("kill", help="kill a job").add_argument("id", type=int)
    sub.add_parser("delete", help="delete a job").add_argument("id", type=int)
    jobs = sub.add_parser("jobs", help="list jobs")
    jobs.add_argument("--status")
    jobs.add_argument("--json", action="store_true")
    pilots = sub.add_parser("pilots", help="list pilots and their checks")
    pilots.add_argument("--json", action="store_true")
    pilots.add_argument("--log", metavar="STAMP", help="print that pilot's uploaded log")
    put = sub.add_parser("put-file", help="store a file in the catalogue under an LFN")
    put.add_argument("lfn")
    put.add_argument("path", type=Path)
    upload = sub.add_parser(
        "proxy-upload",
        help="store a proxy of yours on the stub, for your jobs' payloads",
        description="Sign a proxy for a key the stub makes (no private key is sent) with"
        " your certificate (--cert/--key, X509_USER_CERT/KEY, ~/.globus) or, with --proxy,"
        " with that proxy. Pilots get proxies delegated from it for each of your jobs.",
    )
    upload.add_argument("--cert", type=Path, help="user certificate (PEM)")
    upload.add_argument("--key", type=Path, help="user private key (PEM, may be encrypted)")
    upload.add_argument(
        "--valid", type=float, default=168.0, metavar="HOURS", help="lifetime (default 168)"
    )
    return parser


def _positive(kind: type[int] | type[float]) -> Callable[[str], int | float]:
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            value = 0
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r}: give a positive {kind.__name__}")
        return value

    return parse


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    quiet = logging.INFO if args.command == "serve" else logging.ERROR
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else quiet,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        if args.command == "serve":
            return serve(args)
        if not args.server:
            raise UsageError("no server: give --server URL or set PILOT_SERVER")
        issuer = upload_issuer(args) if args.command == "proxy-upload" else None
        with user_client(args, issuer) as client:
            return run_client_command(client, args, issuer)
    except PilotError as exc:
        print(f"pilot-stub: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    except (OSError, ValueError) as exc:
        print(f"pilot-stub: {exc}", file=sys.stderr)
        return int(ExitCode.USAGE)
    except KeyboardInterrupt:
        return int(ExitCode.SIGNALLED)


def user_client(args: argparse.Namespace, issuer: credentials.Proxy | None = None) -> UserClient:
    token = args.token
    if token is None:
        found = credentials.find_token()
        token = found.value if found is not None else None
    verify: ssl.SSLContext | bool = True
    if args.server.startswith("https://"):
        proxy = credentials.load_proxy(args.proxy) if args.proxy else issuer
        verify = credentials.ssl_context(
            proxy, getattr(args, "ca_dir", None), getattr(args, "ca_file", None)
        )
    return UserClient(args.server, verify=verify, bearer=token)


def _tokens(path: Path | None) -> frozenset[str]:
    if path is None:
        return frozenset()
    return frozenset(line.strip() for line in path.read_text().splitlines() if line.strip())


def server_security(args: argparse.Namespace) -> tuple[ssl.SSLContext | None, AuthPolicy]:
    auth = AuthPolicy(_tokens(args.pilot_token_file), _tokens(args.user_token_file))
    if args.cert is None:
        if args.require_client_cert:
            raise UsageError("--require-client-cert needs --cert (HTTPS)")
        return None, auth
    ctx = credentials.server_ssl_context(
        args.cert,
        args.key,
        getattr(args, "ca_dir", None),
        getattr(args, "ca_file", None),
        require_client_cert=args.require_client_cert,
    )
    return ctx, auth


def serve(args: argparse.Namespace) -> int:
    tmp = None
    if args.db is None:
        tmp = tempfile.TemporaryDirectory(prefix="pilot-stub-")
        args.db = Path(tmp.name) / "stub.db"
    ssl_context, auth = server_security(args)
    settings = ServerSettings(
        db=args.db,
        sandbox_dir=args.sandbox_dir or args.db.parent / (args.db.name + ".sandboxes"),
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
    )
    server = StubServer(settings)
    server.start()
    if args.url_file:
        args.url_file.write_text(server.url + "\n")
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


def upload_issuer(args: argparse.Namespace) -> credentials.Proxy:
    """What signs the uploaded proxy: --proxy, else the user certificate and key."""
    if args.valid <= 0 or args.valid > 24 * 366:
        raise UsageError(f"--valid {args.valid:g}: give a number of hours between 0 and 8784")
    if args.proxy and not (args.cert or args.key):
        proxy = credentials.load_proxy(args.proxy)
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


def run_client_command(
    client: UserClient, args: argparse.Namespace, issuer: credentials.Proxy | None = None
) -> int:
    command = args.command
    if command == "submit":
        for path in args.jdl:
            for job_id in submit_file(client, path):
                print(job_id)
    elif command == "status":
        jobs = [client.job(i) for i in args.ids]
        _print_jobs(jobs, args.json)
    elif command == "jobs":
        _print_jobs(client.jobs(args.status), args.json)
    elif command == "logging-info":
        for row in client.logging_info(args.id):
            stamp = datetime.fromtimestamp(row["Timestamp"], UTC).strftime("%Y-%m-%d %H:%M:%S")
            print(
                f"{stamp}  {row['Status']:<11} {row['MinorStatus']:<32} "
                f"{row['ApplicationStatus']:<20} {row['Source']}"
            )
        timing = client.job(args.id).get("timing")
        if timing:
            print("timing: " + ", ".join(f"{k}={v:.3f}s" for k, v in timing.items()))
    elif command == "get-output":
        target = args.dir / str(args.id)
        names = client.get_output(args.id, target)
        print(f"{len(names)} file(s) in {target}")
    elif command in ("kill", "delete"):
        result = client.kill(args.id) if command == "kill" else client.delete(args.id)
        print(f"job {args.id}: {result}")
    elif command == "pilots":
        _print_pilots(client, args)
    elif command == "put-file":
        sha = client.put_file(args.lfn, args.path)
        print(f"{args.lfn} {sha}")
    elif command == "proxy-upload" and issuer is not None:
        stored = client.proxy_upload(issuer, timedelta(hours=args.valid))
        until = datetime.fromtimestamp(stored["not_after"], UTC).strftime("%Y-%m-%d %H:%M:%S")
        print(f"proxy of {stored['identity']} stored, valid until {until} UTC")
    return 0


def submit_file(client: UserClient, path: Path) -> list[int]:
    """Submit one JDL file: pack its local input sandbox, upload it, send the JDL."""
    try:
        attrs = jdl.parse(path.read_bytes())
    except jdl.JDLError as exc:
        raise jdl.JDLError(f"{path}:{exc}", exc.line, exc.col) from None
    entries = jdl.JobDescription.from_attrs(attrs).input_sandbox if _has_exe(attrs) else ()
    files = local_inputs(path, tuple(entries))
    if files:
        with tempfile.TemporaryDirectory() as tmp:
            packed = Path(tmp) / "sandbox.tar.gz"
            outpack.pack_files(files, packed)
            sha = client.put_sandbox(packed)
        key = next(k for k in attrs if k.lower() == "inputsandbox")
        attrs[key] = [*(e for e in entries if e.startswith(REMOTE_PREFIXES)), f"SB:{sha}"]
    return client.submit(jdl.dumps(attrs))


def _has_exe(attrs: dict[str, jdl.Value]) -> bool:
    return jdl.get(attrs, "Executable") is not None


def _print_jobs(jobs: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        print(json.dumps(jobs, indent=2))
        return
    for job in jobs:
        print(
            f"{job['job_id']:>6}  {job['status']:<11} {job['minor_status']:<34} "
            f"{job['application_status'] or '-':<18} {job['site'] or '-'}"
        )


def _print_pilots(client: UserClient, args: argparse.Namespace) -> None:
    if args.log:
        print(client.pilot_log(args.log), end="")
        return
    pilots = client.pilots()
    if args.json:
        print(json.dumps(pilots, indent=2))
        return
    for pilot in pilots:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(pilot["registered"]))
        checks = pilot.get("checks", {}).get("results", [])
        fit = "fit" if pilot.get("checks", {}).get("ok", True) else "NOT FIT"
        print(f"{pilot['stamp']}  {when}  site={pilot.get('site', '-')}  {fit}")
        for check in checks:
            print(f"    {check['name']:<14} {check['status']:<8} {check['message']}")
