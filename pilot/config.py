"""PilotConfig: every setting of the pilot, built once from defaults < file < environment < CLI.

Each field declares, once, how it is read and what it may hold (:class:`Spec`: its kind,
range or choices, unit, help text, and which subcommands take it as a flag), so the TOML
file, ``PILOT_*`` variables and ``pilot run --...`` options are all derived from this one
table and all validated by the same code. A bad value is refused with one line naming
the flag, variable or TOML key as the user wrote it and what is allowed
(:class:`~pilot.errors.UsageError`, exit 2). ``pilot config --show`` prints the effective
configuration as TOML with where each value came from; ``pilot config --check`` validates
without running anything. Nothing here reads the environment at import time.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pilot.errors import UsageError

# Which subcommands take a group's settings as flags (all of them are read from the file
# and the environment everywhere; ``pilot config`` takes every flag).
GROUP_COMMANDS: dict[str, frozenset[str]] = {
    "server": frozenset({"run", "check"}),
    "identity": frozenset({"run", "check"}),
    "slot": frozenset({"run", "check", "local"}),
    "loop": frozenset({"run"}),
    "checks": frozenset({"run", "check", "local"}),
    "job": frozenset({"run", "local"}),
    "credentials": frozenset({"run", "check"}),
    "logging": frozenset({"run", "check", "local"}),
}
SERVER_SCHEMES = ("http", "https", "dips")
# High bounds. Times: every interval ends up in a thread wait, which overflows past
# threading.TIMEOUT_MAX (~292 years), and far below that a typo only makes a pilot that
# never stops, never reports or never kills. Sizes: beyond any real node.
HOUR, DAY, DAYS_30 = 3600, 86400, 30 * 86400
MAX_CORES = 1 << 16
MAX_MB = 1 << 30  # 1 PiB


@dataclass(frozen=True)
class Spec:
    """What one setting may hold and how it is presented."""

    kind: str  # str | int | float | path | list | table
    help: str
    group: str
    unit: str = ""
    low: float | None = None  # smallest allowed value (inclusive)
    high: float | None = None  # largest allowed value (inclusive)
    above: float | None = None  # exclusive lower bound
    choices: tuple[str, ...] = ()
    env: bool = True
    cli: bool = True
    check: Callable[[Any], str | None] | None = None  # extra test: a problem, or None
    expects: str = ""  # what is allowed, when the kind and bounds do not say it
    unset: str = "none"  # what an unset value means, for --help

    def allowed(self) -> str:
        """What the setting accepts, in words (the second half of an error line)."""
        if self.expects:
            return self.expects
        if self.choices:
            return "one of " + ", ".join(self.choices)
        what = {
            "int": "a whole number",
            "float": "a number",
            "str": "a non-empty text",
            "path": "a path",
            "list": "comma-separated values",
            "table": "a TOML table",
        }[self.kind]
        bounds = []
        if self.low is not None:
            bounds.append(f">= {_num(self.low)}")
        if self.above is not None:
            bounds.append(f"> {_num(self.above)}")
        if self.high is not None:
            bounds.append(f"<= {_num(self.high)}")
        unit = f" ({self.unit})" if self.unit else ""
        return " ".join([what, " and ".join(bounds)]).strip() + unit


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _f(
    default: Any,
    kind: str,
    help: str,
    group: str = "server",  # see GROUP_COMMANDS: which subcommands take it as a flag
    *,
    unit: str = "",
    low: float | None = None,
    high: float | None = None,
    above: float | None = None,
    choices: tuple[str, ...] = (),
    env: bool = True,
    cli: bool = True,
    check: Callable[[Any], str | None] | None = None,
    expects: str = "",
    unset: str = "none",
) -> Any:
    spec = Spec(kind, help, group, unit, low, high, above, choices, env, cli, check, expects, unset)
    meta = {"spec": spec, "kind": kind, "help": help, "env": env, "cli": cli}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def _server_url(value: Any) -> str | None:
    try:
        parts = urlsplit(str(value))
    except ValueError:  # an unclosed [IPv6 address
        return "not a server URL"
    if parts.scheme not in SERVER_SCHEMES or not parts.hostname:
        return "not a server URL"
    try:
        port = parts.port  # raises on a port out of range or not a number
    except ValueError:
        port = 0
    return "the URL's port is not a number in 1..65535" if port == 0 else None


def _names(value: Any) -> str | None:
    bad = [v for v in value if not v or any(c.isspace() for c in v)]
    return f"{bad[0]!r} is not a name (no blanks)" if bad else None


@dataclass(frozen=True)
class PilotConfig:
    # where the work comes from
    server: str | None = _f(
        None,
        "str",
        "matcher URL: http(s)://HOST:PORT (stub) or dips://HOST:PORT (DIRAC)",
        "server",
        check=_server_url,
        expects="http://HOST:PORT, https://HOST[:PORT] or dips://HOST:PORT[/System/Service]",
    )
    backend: str = _f(
        "auto",
        "str",
        "protocol; auto: from the URL scheme",
        "server",
        choices=("auto", "stub", "dirac"),
    )
    # who we are
    site: str = _f("Local.localhost", "str", "site name (DIRAC Site)", "identity")
    ce: str | None = _f(None, "str", "computing element name", "identity", unset="the host name")
    queue: str | None = _f(None, "str", "CE queue name", "identity")
    vo: str | None = _f(None, "str", "virtual organization", "identity")
    tags: list[str] = _f([], "list", "extra tags this pilot advertises", "identity", check=_names)
    required_tags: list[str] = _f(
        [], "list", "tags a job must carry to be matched here", "identity", check=_names
    )
    # the slot and the loop
    work_dir: Path | None = _f(
        None, "path", "work directory", "slot", unset="a new pilot-* directory here"
    )
    idle_timeout: float = _f(
        60.0, "float", "stop after this long without a match", "loop", unit="s", low=0, high=DAYS_30
    )
    max_jobs: int | None = _f(None, "int", "stop after this many jobs", "loop", low=1)
    max_concurrent: int | None = _f(None, "int", "at most this many jobs at once", "loop", low=1)
    cores: int | None = _f(
        None,
        "int",
        "override the detected number of cores",
        "slot",
        low=1,
        high=MAX_CORES,
        unset="detected",
    )
    memory_mb: int | None = _f(
        None,
        "int",
        "override the detected memory",
        "slot",
        unit="MB",
        low=1,
        high=MAX_MB,
        unset="detected",
    )
    cpu_margin: float = _f(
        0.1, "float", "fraction of CPU time kept back when matching", "slot", low=0, high=0.9
    )
    # the server: per-call timeout, and how long undelivered reports are retried
    server_timeout: float = _f(
        30.0, "float", "timeout of one server call", "server", unit="s", low=0.1, high=HOUR
    )
    retry_for: float | None = _f(
        None,
        "float",
        "retry undelivered job reports this long",
        "loop",
        unit="s",
        low=0,
        high=DAYS_30,
        unset="until the slot ends",
    )
    command_interval: float = _f(
        20.0,
        "float",
        "time between polls for commands (Kill) for running jobs",
        "loop",
        unit="s",
        low=1,
        high=HOUR,
    )
    # checks
    checks_dir: Path | None = _f(None, "path", "directory of executable checks", "checks")
    plugin_path: list[str] = _f(
        [], "list", "directory of check plugins (pip install --target)", "checks"
    )
    disable_check: list[str] = _f([], "list", "checks not to run", "checks", check=_names)
    require_check: list[str] = _f([], "list", "checks that must pass", "checks", check=_names)
    check_timeout: float = _f(
        30.0, "float", "default timeout of one check", "checks", unit="s", above=0, high=HOUR
    )
    failure_sleep: float = _f(
        0.0,
        "float",
        "hold the slot this long after a failed check",
        "checks",
        unit="s",
        low=0,
        high=DAYS_30,
    )
    checks: dict[str, Any] = _f(
        {}, "table", "[checks.<name>] options", "checks", env=False, cli=False
    )
    # execution and watchdog
    heartbeat_interval: float = _f(
        300.0, "float", "time between heartbeats", "job", unit="s", low=0.1, high=DAY
    )
    sample_interval: float = _f(
        5.0, "float", "time between watchdog samples", "job", unit="s", low=0.05, high=HOUR
    )
    stalled_window: float = _f(
        1800.0, "float", "window for stalled detection", "job", unit="s", above=0, high=DAYS_30
    )
    grace: float = _f(
        30.0, "float", "time between SIGTERM and SIGKILL", "job", unit="s", low=0, high=HOUR
    )
    isolation: str = _f(
        "none", "str", "payload isolation", "job", choices=("auto", "bwrap", "apptainer", "none")
    )
    apptainer_image: str | None = _f(
        None, "str", "Apptainer image for --isolation apptainer", "job"
    )
    drain_file: Path | None = _f(None, "path", "stop taking jobs when this file exists", "job")
    max_output_mb: int = _f(100, "int", "output sandbox size limit", "job", unit="MB", low=1)
    max_stdout_mb: int = _f(50, "int", "cap on each of StdOutput/StdError", "job", unit="MB", low=1)
    max_job_disk_mb: int | None = _f(
        None, "int", "cap on a job directory's size", "job", unit="MB", low=1
    )
    min_free_disk_mb: int = _f(
        100, "int", "kill jobs when free work-dir space drops below", "job", unit="MB", low=0
    )
    stalled_cpu_fraction: float = _f(
        0.05, "float", "CPU/wall below this over the window = stalled", "job", low=0, high=1
    )
    max_job_processes: int | None = _f(
        None, "int", "cap on the processes one job may run", "job", low=1
    )
    # credentials
    proxy: Path | None = _f(
        None, "path", "X.509 proxy", "credentials", unset="X509_USER_PROXY, /tmp/x509up_u<uid>"
    )
    ca_dir: Path | None = _f(
        None,
        "path",
        "CA directory",
        "credentials",
        unset="X509_CERT_DIR, /etc/grid-security/certificates",
    )
    ca_file: Path | None = _f(None, "path", "CA bundle for the server certificate", "credentials")
    payload_proxy: str = _f(
        "full",
        "str",
        "delegated proxy for each payload",
        "job",
        choices=("full", "limited", "off"),
    )
    payload_proxy_max_hours: float = _f(
        48.0, "float", "cap on one payload proxy's lifetime", "job", unit="h", low=0.02, high=8784
    )
    # logging
    log_format: str = _f("text", "str", "log line format", "logging", choices=("text", "json"))
    log_level: str = _f(
        "INFO",
        "str",
        "least severe level logged",
        "logging",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
    )
    # DIRAC backend: service URLs ([dirac] table)
    dirac: dict[str, Any] = _f(
        {}, "table", "[dirac] service URLs and settings", "server", env=False, cli=False
    )

    def resolved_work_dir(self) -> Path:
        return self.work_dir if self.work_dir is not None else Path.cwd()


FIELDS = {f.name: f for f in dataclasses.fields(PilotConfig)}
SPECS: dict[str, Spec] = {name: f.metadata["spec"] for name, f in FIELDS.items()}
# The [dirac] table (pilot.backends.dirac.backend.settings_from_config reads it; any case,
# "_" ignored): DISET service URLs, then the other settings.
DIRAC_SERVICES = (
    "matcher",
    "jobstateupdate",
    "sandboxstore",
    "jobmonitoring",
    "pilotmanager",
    "proxymanager",
    "configuration",
    "filecatalog",
)
DIRAC_KEYS = (
    *DIRAC_SERVICES,
    "storage_elements",
    "output_se",
    "setup",
    "release_version",
    "source",
    "timeout",
)


def env_name(name: str) -> str:
    return "PILOT_" + name.upper()


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def options_for(command: str) -> tuple[str, ...]:
    """The settings a subcommand takes as flags (``config`` takes them all)."""
    return tuple(
        name
        for name, spec in SPECS.items()
        if spec.cli and (command == "config" or command in GROUP_COMMANDS[spec.group])
    )


def default_text(name: str) -> str:
    """The default as a user would write it (for ``--help``)."""
    value = FIELDS[name].default
    if value is dataclasses.MISSING or value is None or value == [] or value == {}:
        return SPECS[name].unset
    return str(value)


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """``; did you mean 'disk'?`` for a misspelt name, else nothing."""
    import difflib  # only a mistake pays for it

    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


# -- conversion ---------------------------------------------------------------------------


class _Bad(Exception):
    """A value the setting cannot take; the message says what is wrong with it."""


def convert(name: str, value: Any, where: str | None = None, source: str = "cli") -> Any:
    """Turn a raw value into the field's type, validated.

    ``source`` is ``cli`` (strings, lists of strings for repeated flags), ``env``
    (strings) or ``file`` (TOML values); ``where`` names the value as the user wrote it
    (``--cores``, ``PILOT_CORES``, ``pilot.toml: cores``) for the error line."""
    spec = SPECS[name]
    try:
        result = _convert(spec, FIELDS[name].default, value, source)
        if spec.check is not None and result not in (None, []):
            problem = spec.check(result)
            if problem:
                raise _Bad(problem)
    except _Bad as exc:
        shown = _as_written(name, value, where, source)
        raise UsageError(f"{shown}: {exc}; expected {spec.allowed()}") from None
    return result


def _as_written(name: str, value: Any, where: str | None, source: str) -> str:
    if source == "env":
        return f"{where or env_name(name)}={value}"
    if source == "file":
        return f"{where or name} = {format_value(value)}"
    if isinstance(value, list):
        value = ",".join(str(v) for v in value)
    return f"{where or flag_name(name)} {value!s}".rstrip()


def _convert(spec: Spec, default: Any, value: Any, source: str) -> Any:
    if spec.kind == "table":
        if not isinstance(value, dict):
            raise _Bad("not a table")
        return dict(value)
    if spec.kind == "list":
        return _to_list(value, source)
    text_source = source != "file"
    if isinstance(value, str) and not value.strip():
        if default is None:
            return None
        raise _Bad("empty")
    if spec.kind in ("str", "path"):
        if not isinstance(value, str):
            raise _Bad("not a text")
        text = value.strip() if text_source else value
        if spec.choices:
            chosen = {c.lower(): c for c in spec.choices}.get(text.lower())
            if chosen is None:
                raise _Bad(f"{text!r} is not allowed{did_you_mean(text, spec.choices)}")
            return chosen
        return Path(os.path.expanduser(text)) if spec.kind == "path" else text
    number = _to_number(spec.kind, value, text_source)
    _check_range(spec, number)
    return number


def _to_number(kind: str, value: Any, text_source: bool) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise _Bad(f"not {'a whole number' if kind == 'int' else 'a number'}")
    if isinstance(value, str) and not text_source:
        raise _Bad("a quoted text, not a number")
    if kind == "int":
        if isinstance(value, float):
            raise _Bad("not a whole number")
        if isinstance(value, int):
            return value
        try:
            return int(value.strip(), 10)
        except ValueError:
            raise _Bad("not a whole number") from None
    try:
        number = float(value)
    except OverflowError:  # a TOML integer beyond any float
        raise _Bad("too small" if isinstance(value, int) and value < 0 else "too large") from None
    except ValueError:
        raise _Bad("not a number") from None
    if not math.isfinite(number):
        raise _Bad("not a finite number")
    return number


def _check_range(spec: Spec, number: float) -> None:
    if spec.low is not None and number < spec.low:
        raise _Bad("too small")
    if spec.above is not None and number <= spec.above:
        raise _Bad("too small")
    if spec.high is not None and number > spec.high:
        raise _Bad("too large")


def _to_list(value: Any, source: str) -> list[str]:
    items = value if isinstance(value, (list, tuple)) else [value]
    out: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise _Bad(f"{format_value(item)} is not a text")
        out.extend(v.strip() for v in item.split(",") if v.strip())
    return out


# -- loading ------------------------------------------------------------------------------


def load(
    cli: Mapping[str, Any],
    env: Mapping[str, str] | None = None,
    config_file: Path | None = None,
) -> tuple[PilotConfig, dict[str, str]]:
    """Build the configuration and the origin of each value."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    origins = dict.fromkeys(FIELDS, "default")
    path = config_file
    if path is None and "PILOT_CONFIG" in env:
        if not env["PILOT_CONFIG"].strip():
            raise UsageError("PILOT_CONFIG=: empty; expected the path of a TOML file")
        path = Path(env["PILOT_CONFIG"])
    if path is not None:
        for name, (key, value) in _read_file(path).items():
            values[name] = convert(name, value, f"{path}: {key}", "file")
            origins[name] = f"file {path}"
        _check_tables(values, path)
    for name, spec in SPECS.items():
        var = env_name(name)
        if spec.env and var in env:
            values[name] = convert(name, env[var], var, "env")
            origins[name] = f"env {var}"
    for name, value in cli.items():
        if name in FIELDS and value is not None:
            values[name] = convert(name, value, flag_name(name), "cli")
            origins[name] = f"cli {flag_name(name)}"
    return PilotConfig(**values), origins


def _read_file(path: Path) -> dict[str, tuple[str, Any]]:
    import tomllib  # only pilots with a configuration file pay for it

    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise UsageError(f"cannot read configuration {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not a text file (TOML expected)") from None
    except ValueError as exc:  # TOMLDecodeError, or an integer of more than 4300 digits
        raise UsageError(f"{path}: not valid TOML: {exc}") from None
    flat: dict[str, tuple[str, Any]] = {}
    items = list(data.items())
    if isinstance(data.get("pilot"), dict):  # optional [pilot] table
        items = [(k, v) for k, v in items if k != "pilot"] + list(data["pilot"].items())
    for key, value in items:
        name = key.replace("-", "_")
        if name not in FIELDS:
            hint = did_you_mean(name, FIELDS)
            raise UsageError(f"{path}: unknown setting {key!r}{hint}")
        flat[name] = (key, value)
    return flat


def _check_tables(values: Mapping[str, Any], path: Path) -> None:
    for name, table in values.get("checks", {}).items():
        if not isinstance(table, dict):
            raise UsageError(
                f"{path}: [checks] {name} = {format_value(table)}: options of a check go in"
                f" a table; expected [checks.{name}] with key = value lines"
            )
        if "timeout" in table:
            _table_number(path, f"[checks.{name}] timeout", table["timeout"], "check_timeout")
    for key, value in values.get("dirac", {}).items():
        norm = str(key).lower().replace("_", "")
        known = {k.replace("_", ""): k for k in DIRAC_KEYS}
        if norm not in known:
            hint = did_you_mean(str(key).lower(), DIRAC_KEYS)
            raise UsageError(
                f"{path}: [dirac] unknown key {key!r}{hint} (known: {', '.join(DIRAC_KEYS)})"
            )
        if norm == "timeout":
            _table_number(path, f"[dirac] {key}", value, "server_timeout")
        elif norm == "storageelements":
            if not isinstance(value, dict):
                raise UsageError(
                    f"{path}: [dirac] {key} = {format_value(value)}: expected a table"
                    f' [dirac.{key}] of NAME = "dips://HOST:PORT/..."'
                )
            for name, url in value.items():
                _dips(path, f"[dirac.{key}] {name}", url)
        elif not isinstance(value, str) or not value.strip():
            raise UsageError(f"{path}: [dirac] {key} = {format_value(value)}: expected a text")
        elif norm in DIRAC_SERVICES:
            _dips(path, f"[dirac] {key}", value)


def _table_number(path: Path, where: str, value: Any, like: str) -> None:
    """A number in a table, held to the bounds of the setting ``like``."""
    spec = SPECS[like]
    try:
        _check_range(spec, _to_number(spec.kind, value, text_source=False))
    except _Bad as exc:
        raise UsageError(
            f"{path}: {where} = {format_value(value)}: {exc}; expected {spec.allowed()}"
        ) from None


def _dips(path: Path, where: str, value: Any) -> None:
    try:
        parts = urlsplit(value) if isinstance(value, str) else None
    except ValueError:  # an unclosed [IPv6 address
        parts = None
    if parts is None or parts.scheme != "dips" or not parts.hostname:
        raise UsageError(
            f"{path}: {where} = {format_value(value)}:"
            " expected a dips://HOST:PORT/System/Service URL"
        )


# -- validation beyond single values --------------------------------------------------------


def where_of(name: str, origins: Mapping[str, str]) -> str:
    """How the user gave ``name``: ``--checks-dir``, ``PILOT_CHECKS_DIR`` or ``FILE: key``."""
    origin = origins.get(name, "default")
    if origin.startswith("cli "):
        return origin[4:]
    if origin.startswith("env "):
        return origin[4:]
    if origin.startswith("file "):
        return f"{origin[5:]}: {name}"
    return name


def check_paths(cfg: PilotConfig, origins: Mapping[str, str]) -> None:
    """Settings whose mistake would make the pilot take jobs without the VO's checks."""
    if cfg.checks_dir is not None and not cfg.checks_dir.is_dir():
        what = "not a directory" if cfg.checks_dir.exists() else "no such directory"
        raise UsageError(f"{where_of('checks_dir', origins)} {cfg.checks_dir}: {what}")
    for entry in cfg.plugin_path:
        if not Path(entry).is_dir():
            what = "not a directory" if Path(entry).exists() else "no such directory"
            raise UsageError(f"{where_of('plugin_path', origins)} {entry}: {what}")
    if cfg.isolation == "apptainer" and not cfg.apptainer_image:
        raise UsageError("--isolation apptainer needs --apptainer-image IMAGE")
    if cfg.work_dir is not None and cfg.work_dir.exists() and not cfg.work_dir.is_dir():
        raise UsageError(f"{where_of('work_dir', origins)} {cfg.work_dir}: not a directory")
    if cfg.proxy is not None and not cfg.proxy.is_file():
        what = "not a file" if cfg.proxy.exists() else "no such file"
        raise UsageError(f"{where_of('proxy', origins)} {cfg.proxy}: {what}")


def check_names(cfg: PilotConfig, origins: Mapping[str, str], known: Iterable[str]) -> None:
    """Every check named by the configuration exists (a misspelt one is refused)."""
    names = sorted(set(known))
    listed = f" (checks here: {', '.join(names)})"
    for setting in ("disable_check", "require_check"):
        for name in getattr(cfg, setting):
            if name not in names:
                hint = did_you_mean(name, names)
                raise UsageError(
                    f"{where_of(setting, origins)} {name}: no such check{hint}{listed}"
                )
    for name in cfg.checks:
        if name not in names:
            hint = did_you_mean(name, names)
            raise UsageError(
                f"{origins.get('checks', '').removeprefix('file ')}: [checks.{name}]: "
                f"no such check{hint}{listed}"
            )


_OPTION_KINDS = {
    "int": "a whole number",
    "number": "a number",
    "bool": "true or false",
    "str": "a text",
    "path": "a path (text)",
    "list": 'a list of texts, ["a", "b"]',
}


def check_options(
    cfg: PilotConfig, origins: Mapping[str, str], known: Mapping[str, Mapping[str, str]]
) -> None:
    """The options of the built-in checks in ``[checks.<name>]`` tables: known keys, right
    kinds (``known`` maps a check to its options and their kinds; others are not ours)."""
    where = origins.get("checks", "").removeprefix("file ")
    for check, table in cfg.checks.items():
        options = known.get(check)
        if options is None or not isinstance(table, dict):
            continue
        allowed = {"timeout": "number", **options}
        for key, value in table.items():
            kind = allowed.get(key)
            if kind is None:
                hint = did_you_mean(key, allowed)
                raise UsageError(
                    f"{where}: [checks.{check}] unknown option {key!r}{hint}"
                    f" (options: {', '.join(sorted(allowed))})"
                )
            if not _option_fits(kind, value):
                raise UsageError(
                    f"{where}: [checks.{check}] {key} = {format_value(value)}:"
                    f" expected {_OPTION_KINDS[kind]}"
                )


def _option_fits(kind: str, value: Any) -> bool:
    if kind == "bool":
        return isinstance(value, bool)
    if kind in ("int", "number"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if isinstance(value, int):
            return True  # (math.isfinite overflows on a TOML integer beyond any float)
        return kind == "number" and math.isfinite(value)
    if kind in ("str", "path"):
        return isinstance(value, str) and bool(value)
    return isinstance(value, list) and all(isinstance(v, str) and v for v in value)


# -- presentation ---------------------------------------------------------------------------


def format_value(value: Any) -> str:
    """A value as it is written in TOML (and shown to users): ``["a", "b"]``, ``"x"``, ``3``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (str, Path)):
        return json.dumps(str(value), ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    if isinstance(value, dict):
        inner = ", ".join(f"{_key(k)} = {format_value(v)}" for k, v in value.items())
        return "{" + inner + "}"
    return json.dumps(str(value))


def _key(key: str) -> str:
    bare = key and all(c.isalnum() or c in "-_" for c in key) and key.isascii()
    return key if bare else json.dumps(key)


def show(config: PilotConfig, origins: Mapping[str, str]) -> str:
    """The effective configuration as TOML, each value's origin in a comment.

    Unset settings are comments, so the text is a valid configuration file."""
    lines = ["# pilot-agent: effective configuration (origin of each value at the right)"]
    tables = []
    for name in FIELDS:
        value = getattr(config, name)
        origin = origins.get(name, "default")
        if isinstance(value, dict):
            tables.append((name, value, origin))
            continue
        if value is None:
            lines.append(f"# {name} = (not set)".ljust(48) + f"  # {origin}")
        else:
            lines.append(f"{name} = {format_value(value)}".ljust(48) + f"  # {origin}")
    for name, table, origin in tables:
        plain = {k: v for k, v in table.items() if not isinstance(v, dict)}
        nested = {k: v for k, v in table.items() if isinstance(v, dict)}
        if plain or not nested:
            lines += ["", f"[{name}]  # {origin}"]
            lines += [f"{_key(k)} = {format_value(v)}" for k, v in plain.items()]
        for sub, values in nested.items():
            lines += ["", f"[{name}.{_key(sub)}]  # {origin}"]
            lines += [f"{_key(k)} = {format_value(v)}" for k, v in values.items()]
    return "\n".join(lines)


def show_json(config: PilotConfig, origins: Mapping[str, str]) -> str:
    settings = {name: getattr(config, name) for name in FIELDS}
    return json.dumps({"settings": settings, "origins": dict(origins)}, indent=2, default=str)
