"""PilotConfig: every setting of the pilot, built once from defaults < file < environment < CLI.

Each field declares how it is read (its ``kind``), its environment variable and its
command-line flag, so the TOML file, ``PILOT_*`` variables and ``pilot run --...`` options
are all derived from this one table. ``pilot config --show`` prints every value with
where it came from. Nothing here reads the environment at import time.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pilot.errors import UsageError


def _f(default: Any, kind: str, help: str, *, env: bool = True, cli: bool = True) -> Any:
    meta = {"kind": kind, "help": help, "env": env, "cli": cli}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class PilotConfig:
    # where the work comes from
    server: str | None = _f(None, "str", "matcher URL (http(s):// stub, dips:// DIRAC)")
    backend: str = _f("auto", "str", "stub | dirac | auto (from the URL scheme)")
    # who we are
    site: str = _f("Local.localhost", "str", "site name (DIRAC Site)")
    ce: str | None = _f(None, "str", "computing element name (default: host name)")
    queue: str | None = _f(None, "str", "CE queue name")
    vo: str | None = _f(None, "str", "virtual organization")
    tags: list[str] = _f([], "list", "extra tags this pilot advertises")
    required_tags: list[str] = _f([], "list", "tags a job must carry to be matched here")
    # the loop
    work_dir: Path | None = _f(None, "path", "work directory (default: a fresh one here)")
    idle_timeout: float = _f(60.0, "float", "stop after this many seconds without a match")
    max_jobs: int | None = _f(None, "int", "stop after this many jobs")
    max_concurrent: int | None = _f(None, "int", "at most this many jobs at once")
    cores: int | None = _f(None, "int", "override the detected number of cores")
    memory_mb: int | None = _f(None, "int", "override the detected memory (MB)")
    cpu_margin: float = _f(0.1, "float", "fraction of CPU time kept back when matching")
    # the server: per-call timeout, and how long undelivered reports are retried
    server_timeout: float = _f(30.0, "float", "timeout of one server call (s)")
    retry_for: float | None = _f(
        None, "float", "retry undelivered reports this long (s; default: until the slot ends)"
    )
    command_interval: float = _f(
        20.0, "float", "seconds between polls for commands (Kill) for running jobs"
    )
    # checks
    checks_dir: Path | None = _f(None, "path", "directory of executable checks")
    plugin_path: list[str] = _f([], "list", "directory of check plugins (pip install --target)")
    disable_check: list[str] = _f([], "list", "checks not to run")
    require_check: list[str] = _f([], "list", "checks that must pass")
    check_timeout: float = _f(30.0, "float", "default timeout of one check (s)")
    failure_sleep: float = _f(0.0, "float", "hold the slot this long after a failed check (s)")
    checks: dict[str, Any] = _f({}, "table", "[checks.<name>] options", env=False, cli=False)
    # execution and watchdog
    heartbeat_interval: float = _f(300.0, "float", "seconds between heartbeats")
    sample_interval: float = _f(5.0, "float", "seconds between watchdog samples")
    stalled_window: float = _f(1800.0, "float", "window for stalled detection (s)")
    grace: float = _f(30.0, "float", "seconds between SIGTERM and SIGKILL")
    isolation: str = _f("none", "str", "auto | bwrap | apptainer | none")
    apptainer_image: str | None = _f(None, "str", "Apptainer image for --isolation apptainer")
    drain_file: Path | None = _f(None, "path", "stop taking jobs when this file exists")
    max_output_mb: int = _f(100, "int", "output sandbox size limit (MB)")
    max_stdout_mb: int = _f(50, "int", "cap on each of StdOutput/StdError (MB)")
    max_job_disk_mb: int | None = _f(None, "int", "cap on a job directory's size (MB)")
    min_free_disk_mb: int = _f(100, "int", "kill jobs when free work-dir space drops below (MB)")
    stalled_cpu_fraction: float = _f(0.05, "float", "CPU/wall below this over the window = stalled")
    max_job_processes: int | None = _f(None, "int", "cap on the processes one job may run")
    # credentials
    proxy: Path | None = _f(None, "path", "X.509 proxy (default: X509_USER_PROXY)")
    ca_dir: Path | None = _f(None, "path", "CA directory (default: X509_CERT_DIR)")
    ca_file: Path | None = _f(None, "path", "CA bundle for the server certificate")
    payload_proxy: str = _f("full", "str", "delegated proxy for each payload: full | limited | off")
    payload_proxy_max_hours: float = _f(48.0, "float", "cap on one payload proxy's lifetime (h)")
    # logging
    log_format: str = _f("text", "str", "text | json")
    log_level: str = _f("INFO", "str", "DEBUG | INFO | WARNING | ERROR")
    # DIRAC backend: service URLs ([dirac] table)
    dirac: dict[str, Any] = _f({}, "table", "[dirac] service URLs", env=False, cli=False)

    def resolved_work_dir(self) -> Path:
        return self.work_dir if self.work_dir is not None else Path.cwd()


FIELDS = {f.name: f for f in dataclasses.fields(PilotConfig)}
_CHOICES = {
    "backend": ("auto", "stub", "dirac"),
    "isolation": ("auto", "bwrap", "apptainer", "none"),
    "log_format": ("text", "json"),
    "payload_proxy": ("full", "limited", "off"),
    "log_level": ("DEBUG", "INFO", "WARNING", "ERROR"),
}


_RANGES = {  # lowest and highest value allowed (inclusive)
    "server_timeout": (0.1, 3600.0),
    "retry_for": (0.0, 30 * 86400.0),
    "command_interval": (1.0, 3600.0),
}


def env_name(name: str) -> str:
    return "PILOT_" + name.upper()


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def convert(name: str, value: Any) -> Any:
    """Turn a raw value (TOML value, environment string, CLI string) into the field's type."""
    kind = FIELDS[name].metadata["kind"]
    try:
        result = _CONVERTERS[kind](value)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{name}: cannot use {value!r} ({exc})") from None
    if name in _CHOICES and result not in _CHOICES[name]:
        raise UsageError(f"{name}: {result!r} is not one of {', '.join(_CHOICES[name])}")
    if (
        name in _RANGES
        and result is not None
        and not _RANGES[name][0] <= result <= _RANGES[name][1]
    ):
        low, high = _RANGES[name]
        raise UsageError(f"{name}: {result:g} is outside {low:g}..{high:g} (seconds)")
    return result


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("not a boolean")


def _to_list(value: Any) -> list[str]:
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return [v.strip() for v in str(value).split(",") if v.strip()]


def _to_table(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError("expected a table")
    return dict(value)


def _optional(conv: Any) -> Any:
    return lambda v: None if v is None or v == "" else conv(v)


_CONVERTERS: dict[str, Any] = {
    "str": _optional(str),
    "int": _optional(int),
    "float": _optional(float),
    "bool": _to_bool,
    "path": _optional(lambda v: Path(os.path.expanduser(str(v)))),
    "list": _to_list,
    "table": _to_table,
}


def load(
    cli: Mapping[str, Any],
    env: Mapping[str, str] | None = None,
    config_file: Path | None = None,
) -> tuple[PilotConfig, dict[str, str]]:
    """Build the configuration and the origin of each value."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    origins = dict.fromkeys(FIELDS, "default")
    path = config_file or (Path(env["PILOT_CONFIG"]) if env.get("PILOT_CONFIG") else None)
    if path is not None:
        for name, value in _read_file(path).items():
            values[name] = convert(name, value)
            origins[name] = f"file {path}"
    for name, spec in FIELDS.items():
        var = env_name(name)
        if spec.metadata["env"] and var in env:
            values[name] = convert(name, env[var])
            origins[name] = f"env {var}"
    for name, value in cli.items():
        if name in FIELDS and value is not None:
            values[name] = convert(name, value)
            origins[name] = f"cli {flag_name(name)}"
    return PilotConfig(**values), origins


def _read_file(path: Path) -> dict[str, Any]:
    import tomllib  # only pilots with a configuration file pay for it

    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise UsageError(f"cannot read configuration {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: {exc}") from None
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name == "pilot" and isinstance(value, dict):  # optional [pilot] table
            flat.update({k.replace("-", "_"): v for k, v in value.items()})
        elif name in FIELDS:
            flat[name] = value
        else:
            raise UsageError(f"{path}: unknown setting {key!r}")
    unknown = set(flat) - set(FIELDS)
    if unknown:
        raise UsageError(f"{path}: unknown setting(s) {', '.join(sorted(unknown))}")
    return flat


def show(config: PilotConfig, origins: Mapping[str, str]) -> str:
    """The effective configuration, one line per setting, with its origin."""
    lines = []
    for name in FIELDS:
        value = getattr(config, name)
        shown = str(value) if not isinstance(value, (list, dict)) else repr(value)
        lines.append(f"{name:<20} = {shown:<40} ({origins[name]})")
    return "\n".join(lines)
