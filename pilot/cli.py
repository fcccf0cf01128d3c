"""``pilot``: argv -> PilotConfig -> exit code. The only place that exits or sets up logging,
and the composition root: it resolves the credentials once, makes the backend
(:mod:`pilot.backends.factory`) and registers the built-in checks (package ``checks``).

pilot run [--server URL] [--site S] [--ce C] [--vo V] [--work-dir DIR] ...
pilot check [--json] [--server URL]
pilot local JOB.jdl --output-dir DIR
pilot jdl [--expand] FILE
pilot config --show
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import signal
import sys
import tempfile
import threading
import traceback
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from checks import BUILTIN_CHECKS  # the built-in checks are registered here, nowhere else
from pilot import __version__, agent, config
from pilot.backends.base import JobStatus
from pilot.backends.factory import make_backend
from pilot.backends.stub import StubBackend
from pilot.errors import (
    CredentialError,
    ExitCode,
    PilotError,
    Signalled,
    UsageError,
    is_disk_full,
)
from pilot.grid.resolve import Credentials, resolve
from pilot.job import jdl, jobrun
from pilot.node import checking

log = logging.getLogger("pilot")

STOP_SIGNALS = tuple(sig.name for sig in jobrun.STOP_SIGNALS)  # what batch systems send
RUN_OPTIONS = tuple(name for name, f in config.FIELDS.items() if f.metadata["cli"])


# -- logging ------------------------------------------------------------------------------


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data)


class LogBuffer(logging.Handler):
    """Keeps the last lines of the pilot's log for upload to the server at exit."""

    def __init__(self, max_lines: int = 20000) -> None:
        super().__init__()
        self.lines: deque[str] = deque(maxlen=max_lines)
        self.lock_lines = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        line = self.format(record)
        with self.lock_lines:
            self.lines.append(line)

    def text(self) -> str:
        with self.lock_lines:
            return "\n".join(self.lines) + "\n"


def setup_logging(fmt: str, level: str) -> LogBuffer:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    formatter: logging.Formatter = (
        JsonFormatter()
        if fmt == "json"
        else logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
    )
    stream = logging.StreamHandler(sys.stderr)
    buffer = LogBuffer()
    for handler in (stream, buffer):
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    return buffer


# -- argument parsing ---------------------------------------------------------------------


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("configuration (also PILOT_<NAME> or the TOML file)")
    group.add_argument(
        "--config",
        type=Path,
        default=argparse.SUPPRESS,
        help="TOML configuration file (or PILOT_CONFIG)",
    )
    for name in RUN_OPTIONS:
        spec = config.FIELDS[name]
        kwargs: dict[str, Any] = {
            "dest": name,
            "default": argparse.SUPPRESS,
            "help": spec.metadata["help"],
        }
        if spec.metadata["kind"] == "list":
            kwargs["action"] = "append"
        group.add_argument(config.flag_name(name), **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pilot",
        description="pilot-agent: the grid pilot",
        epilog="exit codes:\n" + "\n".join(f"  {c.value:>3}  {c.name}" for c in ExitCode),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=version_text())
    parser.add_argument(
        "--config",
        type=Path,
        default=argparse.SUPPRESS,
        help="TOML configuration file (or PILOT_CONFIG)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="take and run jobs from the matcher")
    _add_config_options(run)
    check = sub.add_parser("check", help="dry run: what would this node report, and get?")
    check.add_argument("--json", action="store_true", dest="as_json")
    _add_config_options(check)
    local = sub.add_parser("local", help="run a JDL job locally through the same code")
    local.add_argument("jdl_file", type=Path)
    local.add_argument("--output-dir", type=Path, required=True)
    _add_config_options(local)
    jdl_cmd = sub.add_parser("jdl", help="parse a JDL file and print it as JSON")
    jdl_cmd.add_argument("jdl_file", type=Path)
    jdl_cmd.add_argument("--expand", action="store_true", help="expand parametric jobs")
    cfg = sub.add_parser("config", help="show the effective configuration")
    cfg.add_argument("--show", action="store_true", required=True)
    _add_config_options(cfg)
    return parser


def build_facts() -> dict[str, Any]:
    """What the one-file build recorded about itself (absent from the package)."""
    try:
        facts = json.loads(Path(__file__).with_name("_build_info.json").read_text())
    except (OSError, ValueError):
        return {}
    return facts if isinstance(facts, dict) else {}


def version_text() -> str:
    kind = "one-file binary" if getattr(sys, "frozen", False) else "package"
    text = f"pilot-agent {__version__} (python {sys.version.split()[0]}, {kind})"
    summary = build_facts().get("summary")
    return f"{text}\n{summary}" if isinstance(summary, str) else text


def load_config(args: argparse.Namespace) -> tuple[config.PilotConfig, dict[str, str]]:
    cli_values = {name: getattr(args, name) for name in RUN_OPTIONS if hasattr(args, name)}
    return config.load(cli_values, config_file=getattr(args, "config", None))


# -- commands -----------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "jdl":
            return cmd_jdl(args)
        cfg, origins = load_config(args)
        buffer = setup_logging(cfg.log_format, cfg.log_level)
        if args.command == "config":
            print(config.show(cfg, origins))
            return int(ExitCode.OK)
        if args.command == "run":
            return cmd_run(cfg, buffer)
        if args.command == "check":
            return cmd_check(cfg, args.as_json)
        if args.command == "local":
            return cmd_local(cfg, args.jdl_file, args.output_dir, buffer)
        raise UsageError(f"unknown command {args.command}")
    except PilotError as exc:
        log.error("%s", exc)
        print(f"pilot: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        return int(ExitCode.SIGNALLED)
    except OSError as exc:  # the node itself: a full disk, an unwritable work directory
        code = ExitCode.DISK_FULL if is_disk_full(exc) else ExitCode.USAGE
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"pilot: {exc.strerror or exc}{where}", file=sys.stderr)
        return int(code)
    except Exception:
        traceback.print_exc()
        return int(ExitCode.INTERNAL)


def cmd_jdl(args: argparse.Namespace) -> int:
    try:
        attrs = jdl.parse(args.jdl_file.read_bytes())
        if args.expand:
            jobs = jdl.expand(attrs)
            for job in jobs:
                jdl.JobDescription.from_attrs(job)
            print(json.dumps([jdl.to_jsonable(j) for j in jobs], indent=2))
        else:
            print(json.dumps(jdl.to_jsonable(attrs), indent=2))
    except jdl.JDLError as exc:
        print(
            f"{args.jdl_file}:{exc}" if exc.line is not None else f"{args.jdl_file}: {exc}",
            file=sys.stderr,
        )
        return int(exc.exit_code)
    except OSError as exc:
        print(f"{args.jdl_file}: {exc.strerror}", file=sys.stderr)
        return int(ExitCode.USAGE)
    return int(ExitCode.OK)


def pilot_credentials(cfg: config.PilotConfig, *, load: bool = True) -> Credentials:
    """The pilot's credentials, resolved once for the whole run (see :mod:`pilot.grid.resolve`)."""
    return resolve(cfg.proxy, cfg.ca_dir, cfg.ca_file, load=load)


def install_signal_handlers(stop: agent.Stop) -> None:
    """Every stop signal, however often it comes, stops the pilot once (the first one
    names the reason); later ones are only counted in the log at debug level."""

    def handler(signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        if stop.set(f"pilot received {name}"):
            log.warning("received %s: stopping (running jobs get SIGTERM, then SIGKILL)", name)
        else:
            log.debug("received %s again: already stopping (%s)", name, stop.reason)

    for name in STOP_SIGNALS:
        signal.signal(getattr(signal, name), handler)


def _work_dir(cfg: config.PilotConfig) -> config.PilotConfig:
    if cfg.work_dir is not None:
        cfg.work_dir.mkdir(parents=True, exist_ok=True)
        return cfg
    return dataclasses.replace(
        cfg, work_dir=Path(tempfile.mkdtemp(prefix="pilot-", dir=".")).resolve()
    )


def cmd_run(cfg: config.PilotConfig, buffer: LogBuffer) -> int:
    from pilot.job import guardian

    cfg = _work_dir(cfg)
    guardian.start(cfg.resolved_work_dir() / "guardian.log")  # it forks: before any thread
    stop = agent.Stop()
    install_signal_handlers(stop)
    creds = pilot_credentials(cfg)  # a bad or expired proxy stops the pilot here, before any call
    backend = make_backend(cfg, creds)
    if isinstance(backend, StubBackend):
        backend.http.prepare()  # overlaps the HTTP stack's set-up with the node checks
    log.info(
        "pilot-agent %s starting: server %s, work dir %s", __version__, cfg.server, cfg.work_dir
    )
    try:
        summary = agent.run(cfg, backend, stop, buffer.text, creds, BUILTIN_CHECKS)
    finally:
        backend.close()
    if stop.is_set():
        raise Signalled(f"stopped: {stop.reason}")
    if summary.reason == "drained":
        return int(ExitCode.DRAINED)
    return int(ExitCode.OK)


def cmd_check(cfg: config.PilotConfig, as_json: bool) -> int:
    stamp = agent.new_stamp()
    try:
        creds = pilot_credentials(cfg)
        usable: CredentialError | None = None
    except CredentialError as exc:  # the credentials check reports it in full
        creds, usable = pilot_credentials(cfg, load=False), exc
    info, report, desc = agent.inspect_node(cfg, stamp, creds, builtins=BUILTIN_CHECKS)
    chosen = agent.choose_isolation(cfg)
    dry_run = None
    if cfg.server:
        try:
            if usable is not None:
                raise usable
            backend = make_backend(cfg, creds)
        except CredentialError as exc:
            log.error("no dry run against %s: %s", cfg.server, exc)
        else:
            try:
                if isinstance(backend, StubBackend):
                    dry_run = backend.dry_run_match(desc.as_dict())
            finally:
                backend.close()
    if as_json:
        out = agent.registration(cfg, info, report, desc, chosen)
        out["fit"] = report.ok
        if dry_run is not None:
            out["dry_run"] = dry_run
        print(json.dumps(out, indent=2, default=str))
    else:
        print(checking.format_table(report))
        print(f"\nisolation: {chosen.runtime} ({chosen.detail})\n")
        for key, value in desc.as_dict().items():
            print(f"{key:<22} {value}")
        if dry_run is not None:
            print()
            print(format_dry_run(dry_run))
    return int(ExitCode.OK if report.ok else ExitCode.CHECK_FAILED)


def format_dry_run(answer: dict[str, Any]) -> str:
    match = answer.get("match")
    if match:
        return f"would be matched: job {match['job_id']}"
    lines = ["no waiting job would be matched"]
    for miss in answer.get("near_misses", []):
        waiting = miss.get("waiting")  # jobs of the same task queue (the stub says)
        more = f" and {waiting - 1} like it" if isinstance(waiting, int) and waiting > 1 else ""
        lines.append(f"  job {miss['job_id']}{more}: " + "; ".join(miss["reasons"]))
    return "\n".join(lines)


def cmd_local(cfg: config.PilotConfig, jdl_file: Path, output_dir: Path, buffer: LogBuffer) -> int:
    from pilot.backends.local import LocalBackend  # pilot run does not need it

    creds = pilot_credentials(cfg)
    backend = LocalBackend.from_file(jdl_file, output_dir)
    cfg = dataclasses.replace(_work_dir(cfg), idle_timeout=0.0)
    # one job, then done: what may finish after the first match makes its quick pass only
    summary = agent.run(
        cfg, backend, agent.Stop(), buffer.text, creds, BUILTIN_CHECKS, finish_later=False
    )
    backend.write_summary(
        [
            {
                "job_id": o.job_id,
                "status": o.status.value,
                "minor_status": o.minor,
                "exit_code": o.exit_code,
                "timing": dict(o.timing),
            }
            for o in summary.outcomes
        ]
    )
    for outcome in summary.outcomes:
        print(f"{outcome.job_id}: {outcome.status} ({outcome.minor})")
    failed = [o for o in summary.outcomes if o.status is not JobStatus.DONE]
    return int(ExitCode.JOB_FAILED if failed else ExitCode.OK)


if __name__ == "__main__":
    sys.exit(main())
