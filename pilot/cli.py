"""``pilot``: argv -> PilotConfig -> exit code. The only place that exits or sets up logging,
and the composition root: it resolves the credentials once, makes the backend
(:mod:`pilot.backends.factory`) and registers the built-in checks (package ``checks``).

pilot run [--server URL] [--site S] [--ce C] [--vo V] [--work-dir DIR] ...
pilot check [--json] [--server URL]
pilot local JOB.jdl --output-dir DIR
pilot jdl [--expand] FILE
pilot config --show [--json] | --check
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import signal
import sys
import tempfile
import threading
import traceback
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

# the built-in checks are registered here, nowhere else
from checks import BUILTIN_CHECKS, BUILTIN_OPTIONS
from pilot import __version__, agent, cliutil, config
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

if TYPE_CHECKING:
    from pilot.backends.local import LocalBackend

log = logging.getLogger("pilot")

STOP_SIGNALS = tuple(sig.name for sig in jobrun.STOP_SIGNALS)  # what batch systems send


# -- logging ------------------------------------------------------------------------------

_JOB_LINE = re.compile(r"job ([\w.-]+)\b")
_JOB_THREAD = re.compile(r"(?:job|heartbeat)-([\w.-]+)")


class JsonFormatter(logging.Formatter):
    """One JSON object per line; lines about a job carry its id in ``job``."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        data: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": message,
        }
        job = getattr(record, "job", None)
        if job is None and (found := _JOB_LINE.match(message)):
            job = found.group(1)
        if job is None and (found := _JOB_THREAD.fullmatch(record.threadName or "")):
            job = found.group(1)  # said from a job's own thread (stage-in, packing, ...)
        if job is not None:
            data["job"] = str(job)
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


TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
TEXT_DATES = "%Y-%m-%d %H:%M:%S"


def setup_logging(fmt: str, level: str) -> LogBuffer:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    formatter: logging.Formatter = (
        JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT, TEXT_DATES)
    )
    stream = logging.StreamHandler(sys.stderr)
    buffer = LogBuffer()
    for handler in (stream, buffer):
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)  # a warning is a log line too (JSON with --log-format json)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    return buffer


# -- argument parsing ---------------------------------------------------------------------

_SPECIAL_METAVARS = {
    "server": "URL",
    "plugin_path": "DIR[,DIR]",
    "checks_dir": "DIR",
    "work_dir": "DIR",
    "ca_dir": "DIR",
    "proxy": "FILE",
    "ca_file": "FILE",
    "drain_file": "FILE",
    "apptainer_image": "IMAGE",
}
_METAVARS = {"int": "N", "float": "X", "path": "PATH", "list": "NAME[,NAME]", "str": "TEXT"}


def option_help(name: str) -> str:
    spec = config.SPECS[name]
    allowed = spec.allowed() if (spec.low, spec.high, spec.above) != (None, None, None) else ""
    unit = f", {spec.unit}" if spec.unit and not allowed else ""
    bounds = f"; {allowed}" if allowed else ""
    repeat = "; repeat or comma-separate" if spec.kind == "list" else ""
    return (
        f"{spec.help} (default: {config.default_text(name)}{unit}{bounds}{repeat};"
        f" env {config.env_name(name)})"
    )


def _add_config_options(parser: argparse.ArgumentParser, command: str) -> None:
    group = parser.add_argument_group("configuration (also PILOT_<NAME> or the TOML file)")
    group.add_argument(
        "--config",
        type=Path,
        default=argparse.SUPPRESS,
        metavar="FILE",
        help="TOML configuration file (default: none; env PILOT_CONFIG)",
    )
    for name in config.options_for(command):
        spec = config.SPECS[name]
        kwargs: dict[str, Any] = {
            "dest": name,
            "default": argparse.SUPPRESS,
            "help": option_help(name),
            "metavar": "{" + ",".join(spec.choices) + "}" if spec.choices else _METAVARS[spec.kind],
        }
        if name in _SPECIAL_METAVARS:
            kwargs["metavar"] = _SPECIAL_METAVARS[name]
        if spec.kind == "list":
            kwargs["action"] = "append"
        group.add_argument(config.flag_name(name), **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = cliutil.Parser(
        prog="pilot",
        description="pilot-agent: the grid pilot",
        epilog=cliutil.exit_codes_epilog(),
        formatter_class=cliutil.HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=version_text())
    parser.add_argument(
        "--config",
        type=Path,
        default=argparse.SUPPRESS,
        metavar="FILE",
        help="TOML configuration file (default: none; env PILOT_CONFIG)",
    )
    parser.add_argument(
        "--server",
        dest="server",
        default=argparse.SUPPRESS,
        metavar="URL",
        help="matcher URL, as in the subcommands (env PILOT_SERVER)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary: str) -> argparse.ArgumentParser:
        made: argparse.ArgumentParser = sub.add_parser(
            name,
            help=summary,
            description=summary,
            epilog=cliutil.exit_codes_epilog(),
            formatter_class=cliutil.HelpFormatter,
        )
        return made

    run = command("run", "take and run jobs from the matcher (the batch payload)")
    _add_config_options(run, "run")
    check = command("check", "dry run: what would this node report, and get?")
    check.add_argument(
        "--json", action="store_true", dest="as_json", help="all facts as JSON (default: a table)"
    )
    _add_config_options(check, "check")
    local = command("local", "run one JDL job here through the same code, no server")
    local.add_argument("jdl_file", type=Path, metavar="JOB.jdl", help="the job description")
    local.add_argument(
        "--output-dir",
        type=Path,
        required=True,
        metavar="DIR",
        help="where the output sandbox and summary.json go (required)",
    )
    _add_config_options(local, "local")
    jdl_cmd = command("jdl", "parse a JDL file and print it as JSON")
    jdl_cmd.add_argument("jdl_file", type=Path, metavar="FILE.jdl", help="the job description")
    jdl_cmd.add_argument(
        "--expand", action="store_true", help="expand parametric jobs (default: as written)"
    )
    cfg = command("config", "show or check the effective configuration (takes every run option)")
    what = cfg.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--show", action="store_true", help="print it as TOML, with where each value came from"
    )
    what.add_argument(
        "--check",
        action="store_true",
        dest="check_only",
        help="validate it (values, paths, check names) without running anything",
    )
    cfg.add_argument("--json", action="store_true", dest="as_json", help="--show as JSON")
    _add_config_options(cfg, "config")
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
    cli_values = {name: getattr(args, name) for name in config.FIELDS if hasattr(args, name)}
    return config.load(cli_values, config_file=getattr(args, "config", None))


def validate(cfg: config.PilotConfig, origins: dict[str, str]) -> None:
    """Everything that can be known wrong before starting: paths, then check names."""
    config.check_paths(cfg, origins)
    settings = agent.check_settings(cfg, BUILTIN_CHECKS)
    known = checking.known_names(settings)
    named = {*cfg.disable_check, *cfg.require_check, *cfg.checks}
    if named - known:  # a plugin whose check is named unlike its entry point: load them
        known |= {check.name for check in checking.discover(settings)}
    config.check_names(cfg, origins, known)
    config.check_options(cfg, origins, BUILTIN_OPTIONS)


# -- commands -----------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    return cliutil.guarded(lambda: _main(argv))


def _main(argv: Sequence[str] | None) -> int:
    args = cliutil.parse(build_parser(), argv)
    if isinstance(args, int):
        return args
    logging_on = False
    try:
        if args.command == "jdl":
            return cmd_jdl(args)
        cfg, origins = load_config(args)
        if args.command == "config":
            return cmd_config(cfg, origins, args)
        validate(cfg, origins)
        local = load_local(args.jdl_file, args.output_dir) if args.command == "local" else None
        buffer = setup_logging(cfg.log_format, cfg.log_level)
        logging_on = True
        if args.command == "run":
            return cmd_run(cfg, buffer)
        if args.command == "check":
            return cmd_check(cfg, args.as_json)
        if local is not None:
            return cmd_local(cfg, local, buffer)
        raise UsageError(f"unknown command {args.command}")
    except PilotError as exc:
        if not (exc.reported and logging_on):
            _report(str(exc), logging_on, _wants_json(args))
        return int(exc.exit_code)
    except KeyboardInterrupt:
        return int(ExitCode.SIGNALLED)
    except BrokenPipeError:
        raise
    except OSError as exc:  # the node itself: a full disk, an unwritable work directory
        code = ExitCode.DISK_FULL if is_disk_full(exc) else ExitCode.USAGE
        where = f" ({exc.filename})" if exc.filename else ""
        _report(f"{exc.strerror or exc}{where}", logging_on, _wants_json(args))
        return int(code)
    except Exception:
        traceback.print_exc()
        return int(ExitCode.INTERNAL)


def _report(message: str, logging_on: bool, as_json: bool = False) -> None:
    """An error, once: as a log line when logging is set up, else plain; a JSON record
    when JSON logs were asked for, even before they could be set up."""
    if logging_on:
        log.error("%s", message)
    elif as_json:
        record = logging.LogRecord("pilot", logging.ERROR, __file__, 0, message, None, None)
        print(JsonFormatter().format(record), file=sys.stderr)
    else:
        print(f"pilot: {message}", file=sys.stderr)


def _wants_json(args: argparse.Namespace) -> bool:
    """Whether --log-format or PILOT_LOG_FORMAT asks for JSON (read leniently: this
    decides how to say that something else is wrong)."""
    value = getattr(args, "log_format", None) or os.environ.get("PILOT_LOG_FORMAT", "")
    return str(value).strip().lower() == "json"


def cmd_config(cfg: config.PilotConfig, origins: dict[str, str], args: argparse.Namespace) -> int:
    if args.check_only:
        validate(cfg, origins)  # single values were checked as they were read
        print("configuration OK")
        return int(ExitCode.OK)
    print(config.show_json(cfg, origins) if args.as_json else config.show(cfg, origins))
    return int(ExitCode.OK)


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
    except BrokenPipeError:
        raise  # our reader went away: cliutil.guarded ends quietly
    except OSError as exc:
        print(f"pilot: {args.jdl_file}: {exc.strerror or exc}", file=sys.stderr)
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
    creds = pilot_credentials(cfg)  # a bad or expired proxy stops the pilot here, before any call
    backend = make_backend(cfg, creds)  # starts no thread
    guardian.start(cfg.resolved_work_dir() / "guardian.log")  # it forks: before any thread
    stop = agent.Stop()
    install_signal_handlers(stop)
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
        print(cliutil.table(["Resource", "Offered"], list(desc.as_dict().items())))
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


def load_local(jdl_file: Path, output_dir: Path) -> LocalBackend:
    """The jobs of ``pilot local``, every one checked before any runs."""
    from pilot.backends.local import LocalBackend  # pilot run does not need it

    if output_dir.exists() and not output_dir.is_dir():
        raise UsageError(f"--output-dir {output_dir}: not a directory")
    try:
        return LocalBackend.from_file(jdl_file, output_dir)
    except jdl.JDLError as exc:
        where = f"{jdl_file}:{exc}" if exc.line is not None else f"{jdl_file}: {exc}"
        raise jdl.JDLError(where) from None
    except OSError as exc:
        raise UsageError(f"{jdl_file}: {exc.strerror or exc}") from None


def cmd_local(cfg: config.PilotConfig, backend: LocalBackend, buffer: LogBuffer) -> int:
    creds = pilot_credentials(cfg)
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
