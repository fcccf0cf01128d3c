"""Discovers the environment checks and runs them, each under a timeout, all at once.

Three kinds of check, all seen through the :class:`pilot.api.Check` protocol:

- built-ins: the checks registered in :attr:`CheckSettings.builtins` (the CLI passes the
  ``checks`` package's list; this module imports no check);
- VO plugins: the entry-point group ``pilot.checks``; an entry point names a class
  (instantiated with no arguments) or an instance, validated when loaded. A plugin
  that fails to import or to validate becomes a FAILED result named after its entry
  point: it is reported, it never crashes the pilot;
- executables in any language from ``checks_dir`` (:class:`ExecCheck`).

Each check runs in its own daemon thread. A thread cannot be killed, so a check that
overruns its timeout is given up on (FAILED "timed out after N s") and its thread left
behind; being a daemon it cannot hold up interpreter exit. The run therefore returns
within the longest timeout plus a little, whatever the checks do.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pilot import proc
from pilot.api import Check, CheckContext, CheckOutcome, CheckResult, Status
from pilot.errors import UsageError
from pilot.node import entrypoints

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "pilot.checks"
EXIT_STATUS = {0: Status.PASSED, 1: Status.FAILED, 2: Status.WARNING}
STDERR_LINES = 5  # last stderr lines of an executable check kept as its message
# Seconds an executable check's process gets less than the check, so that it is
# killed (by pilot.proc) before the runner gives up on the check's thread.
EXEC_MARGIN = 0.25


@dataclass(frozen=True)
class CheckSettings:
    """How checks are found and run; built by the configuration layer."""

    default_timeout: float = 30.0
    disabled: frozenset[str] = frozenset()
    required: frozenset[str] = frozenset()  # names forced required
    timeouts: Mapping[str, float] = field(default_factory=dict)  # per-check override
    checks_dir: Path | None = None
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # [checks.<name>]
    entry_points: bool = True
    plugin_path: tuple[Path, ...] = ()  # searched for entry points before sys.path
    builtins: tuple[Check, ...] = ()  # registered by the caller, run before any plugin

    def __post_init__(self) -> None:
        for name, value in {"default": self.default_timeout, **self.timeouts}.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise UsageError(f"check timeout for {name!r} must be positive, not {value!r}")


@dataclass(frozen=True)
class CheckReport:
    """The results of one run, in the order the checks were given."""

    results: tuple[CheckResult, ...]

    @property
    def ok(self) -> bool:
        """True when no required check FAILED."""
        return not self.failed_required

    @property
    def failed_required(self) -> tuple[CheckResult, ...]:
        return tuple(r for r in self.results if r.required and r.failed)

    def result(self, name: str) -> CheckResult | None:
        return next((r for r in self.results if r.name == name), None)

    def facts(self, name: str) -> Mapping[str, Any]:
        """The facts of check ``name`` ({} if it did not run)."""
        found = self.result(name)
        return found.facts if found is not None else {}

    @property
    def tags(self) -> tuple[str, ...]:
        """Union of the tags of the checks that did not fail, sorted."""
        return tuple(sorted({tag for r in self.results if not r.failed for tag in r.tags}))

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "tags": list(self.tags),
            "results": [_result_to_json(r) for r in self.results],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CheckReport:
        """Inverse of :meth:`to_json`; ValueError on malformed data."""
        try:
            return cls(tuple(_result_from_json(item) for item in data["results"]))
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise ValueError(f"malformed check report: {exc!r}") from exc


def _result_to_json(result: CheckResult) -> dict[str, Any]:
    return {
        "name": result.name,
        "required": result.required,
        "status": result.status.value,
        "message": result.message,
        "duration": round(result.duration, 3),
        "facts": dict(result.facts),
        "tags": list(result.tags),
        "source": result.source,
    }


def _result_from_json(item: Mapping[str, Any]) -> CheckResult:
    facts, tags = item.get("facts", {}), item.get("tags", [])
    if not isinstance(facts, dict) or not isinstance(tags, list):
        raise ValueError(f"malformed check result: {item!r}")
    return CheckResult(
        name=str(item["name"]),
        required=bool(item["required"]),
        status=Status(item["status"]),
        message=str(item.get("message", "")),
        duration=float(item.get("duration", 0.0)),
        facts=facts,
        tags=tuple(str(tag) for tag in tags),
        source=str(item.get("source", "builtin")),
    )


# --- discovery -------------------------------------------------------------------


class PluginCheck:
    """A VO plugin loaded from an entry point, with where it came from."""

    def __init__(self, plugin: Check, source: str) -> None:
        self.plugin = plugin
        self.name: str = plugin.name
        self.required: bool = plugin.required
        self.timeout: float | None = plugin.timeout
        self.source = source

    def run(self, ctx: CheckContext) -> CheckOutcome:
        return self.plugin.run(ctx)


class LoadFailure:
    """Stands for a plugin that could not be loaded: running it reports why."""

    required: bool = False
    timeout: float | None = None

    def __init__(self, name: str, reason: str, source: str) -> None:
        self.name: str = name
        self.reason = reason
        self.source = source

    def run(self, ctx: CheckContext) -> CheckOutcome:
        return CheckOutcome(Status.FAILED, self.reason)


def discover(settings: CheckSettings) -> list[Check]:
    """Built-ins, then entry-point plugins, then executables; load failures included."""
    found: list[Check] = list(settings.builtins)
    if settings.entry_points:
        found.extend(_add_plugin_path(settings.plugin_path))
        try:
            entry_points = _entry_points()
        except Exception as exc:  # broken metadata on sys.path: report it, go on
            log.warning("cannot list %s entry points: %s", ENTRY_POINT_GROUP, exc)
            reason = f"cannot list entry points: {_describe(exc)}"
            entry_points = ()
            found.append(LoadFailure("entry-points", reason, f"entry-point:{ENTRY_POINT_GROUP}"))
        found.extend(_load_entry_point(ep) for ep in entry_points)
    if settings.checks_dir is not None:
        found.extend(exec_checks(settings.checks_dir))
    return _unique(found)


def known_names(settings: CheckSettings) -> set[str]:
    """The names of the checks :func:`discover` would find, without loading any plugin
    (entry-point names are the plugins' check names by convention)."""
    names = {check.name for check in settings.builtins}
    if settings.entry_points:
        _add_plugin_path(settings.plugin_path)
        try:
            names.update(ep.name for ep in _entry_points())
        except Exception as exc:  # broken metadata: discover() reports it as a check
            log.debug("cannot list entry points: %s", exc)
    if settings.checks_dir is not None:
        names.update(check.name for check in exec_checks(settings.checks_dir))
    return names


def _add_plugin_path(directories: Sequence[Path]) -> list[Check]:
    """Put the plugin directories first on sys.path (their modules must import from there,
    also inside the one-file binary, which ignores PYTHONPATH); a missing one is reported."""
    failures: list[Check] = []
    for directory in reversed(directories):
        if not directory.is_dir():
            reason = f"plugin directory {directory} does not exist"
            failures.append(LoadFailure("plugin-path", reason, f"plugin-path:{directory}"))
        elif str(directory) not in sys.path:
            sys.path.insert(0, str(directory))
    return failures


def _entry_points() -> Sequence[entrypoints.EntryPoint]:
    return entrypoints.entry_points(ENTRY_POINT_GROUP)


def _load_entry_point(ep: entrypoints.EntryPoint) -> Check:
    source = f"entry-point:{ep.distribution or ep.value}"
    try:
        obj = ep.load()
        if isinstance(obj, type):
            obj = obj()
    except (Exception, SystemExit) as exc:
        log.warning("check plugin %s (%s) failed to load: %s", ep.name, ep.value, exc)
        log.debug("loading check plugin %s", ep.name, exc_info=True)
        return LoadFailure(ep.name, f"cannot load {ep.value}: {_describe(exc)}", source)
    problem = protocol_problem(obj)
    if problem is not None:
        log.warning("check plugin %s (%s) is not a valid check: %s", ep.name, ep.value, problem)
        return LoadFailure(ep.name, f"{ep.value} is not a valid check: {problem}", source)
    log.debug("loaded check plugin %s from %s", obj.name, source)
    return PluginCheck(obj, source)


def protocol_problem(obj: object) -> str | None:
    """Why ``obj`` does not satisfy :class:`pilot.api.Check`, or None if it does."""
    try:
        return _attribute_problem(obj)
    except Exception as exc:  # a property that raises
        return f"reading its attributes raised {_describe(exc)}"


def _attribute_problem(obj: object) -> str | None:
    missing = [attr for attr in ("name", "required", "timeout", "run") if not hasattr(obj, attr)]
    if missing:
        return "missing " + ", ".join(missing)
    name, required, timeout = (getattr(obj, attr) for attr in ("name", "required", "timeout"))
    if not isinstance(name, str) or not name.strip():
        return f"name must be a non-empty string, not {name!r}"
    if not isinstance(required, bool):
        return f"required must be a bool, not {required!r}"
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0
    ):
        return f"timeout must be None or a positive number, not {timeout!r}"
    if not callable(getattr(obj, "run", None)):
        return "run is not callable"
    return None


def exec_checks(directory: Path) -> list[Check]:
    """An :class:`ExecCheck` for every executable regular file in ``directory``, sorted.

    Hidden files (a leading dot: editor and VCS droppings) are left out, as run-parts does.
    """
    try:
        entries = sorted(directory.iterdir())
    except OSError as exc:
        log.warning("checks directory %s: %s", directory, exc)
        return [LoadFailure("checks-dir", f"cannot list {directory}: {exc}", f"exec:{directory}")]
    return [
        ExecCheck(path)
        for path in entries
        if not path.name.startswith(".") and path.is_file() and os.access(path, os.X_OK)
    ]


def _unique(found: list[Check]) -> list[Check]:
    """Replace a check whose name is already taken by a FAILED stand-in saying so."""
    seen: dict[str, str] = {}
    unique: list[Check] = []
    for check in found:
        source = source_of(check)
        if check.name in seen:
            reason = f"check name {check.name!r} already used by {seen[check.name]}"
            log.warning("%s: %s", source, reason)
            check = LoadFailure(f"{check.name}@{source}", reason, source)
        seen.setdefault(check.name, source)
        unique.append(check)
    return unique


def source_of(check: Check) -> str:
    source = getattr(check, "source", None)
    if isinstance(source, str):
        return source
    module = type(check).__module__
    return "builtin" if module.split(".")[0] == "checks" else f"python:{module}"


# --- executable checks -----------------------------------------------------------


class ExecCheck:
    """An executable check (any language): exit 0 passed, 1 failed, 2 warning, else failed.

    A JSON object on stdout may carry ``facts`` (object), ``tags`` (list of strings) and
    ``message``; otherwise the last lines of stderr are the message. The process gets
    ``PILOT_WORK_DIR``, ``PILOT_CORES``, ``PILOT_BATCH_SYSTEM`` and ``PILOT_CHECK_OPTIONS``
    (its ``[checks.<name>]`` table as JSON) and runs in the work directory.
    """

    required: bool = False
    timeout: float | None = None

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name: str = path.name
        self.source = f"exec:{path}"

    def run(self, ctx: CheckContext) -> CheckOutcome:
        limit = ctx.timeout if ctx.timeout is not None else 30.0
        result = proc.run(
            [str(self.path)],
            timeout=max(0.1, limit - EXEC_MARGIN),
            env=self._environment(ctx),
            cwd=str(ctx.work_dir),
        )
        if result.timed_out:
            return CheckOutcome(Status.FAILED, f"timed out after {limit:g} s")
        facts, tags, message = self._parse_stdout(result.stdout)
        message = message or _tail(result.stderr)
        status = EXIT_STATUS.get(result.returncode, Status.FAILED)
        if result.returncode not in EXIT_STATUS or (status is Status.FAILED and not message):
            code = result.returncode
            prefix = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
            message = f"{prefix}: {message}" if message else prefix
        return CheckOutcome(status, message, facts, tags)

    def _environment(self, ctx: CheckContext) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            PILOT_WORK_DIR=str(ctx.work_dir),
            PILOT_CORES=str(ctx.batch.cores),
            PILOT_BATCH_SYSTEM=ctx.batch.system,
            PILOT_CHECK_OPTIONS=json.dumps(dict(ctx.options.get(self.name, {})), default=str),
        )
        return env

    def _parse_stdout(self, stdout: str) -> tuple[dict[str, Any], tuple[str, ...], str]:
        """(facts, tags, message) from a JSON object on stdout; empty if there is none."""
        if not stdout.strip():
            return {}, (), ""
        try:
            data = json.loads(stdout)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            log.warning("check %s: stdout is not a JSON object, ignored", self.name)
            return {}, (), ""
        facts, tags, message = data.get("facts", {}), data.get("tags", []), data.get("message")
        if not isinstance(facts, dict):
            log.warning("check %s: 'facts' is not a JSON object, ignored", self.name)
            facts = {}
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            log.warning("check %s: 'tags' is not a list of strings, ignored", self.name)
            tags = []
        return facts, tuple(tags), message if isinstance(message, str) else ""


def _tail(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " | ".join(lines[-STDERR_LINES:])


# --- running ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    check: Check
    name: str
    required: bool
    timeout: float
    source: str


class _Running:
    """One check running in its own daemon thread."""

    def __init__(self, plan: _Plan, ctx: CheckContext) -> None:
        self.plan = plan
        self._ctx = replace(ctx, timeout=plan.timeout)
        self._done = threading.Event()
        self._outcome = CheckOutcome(Status.FAILED, "did not run")
        self._duration = 0.0
        self._started = 0.0
        self._thread = threading.Thread(target=self._main, name=f"check-{plan.name}", daemon=True)

    def start(self) -> None:
        self._started = time.monotonic()
        self._thread.start()

    def _main(self) -> None:
        start = time.monotonic()
        try:
            self._outcome = _validated(self.plan.check.run(self._ctx))
        except (Exception, SystemExit) as exc:
            log.debug("check %s raised", self.plan.name, exc_info=True)
            self._outcome = CheckOutcome(Status.FAILED, _describe(exc))
        self._duration = time.monotonic() - start
        self._done.set()

    def result(self) -> CheckResult:
        """Wait for the check, at most until its timeout, and return its result."""
        plan = self.plan
        remaining = self._started + plan.timeout - time.monotonic()
        if not self._done.wait(max(0.0, remaining)):
            log.warning("check %s timed out after %g s", plan.name, plan.timeout)
            outcome, duration = (
                CheckOutcome(Status.FAILED, f"timed out after {plan.timeout:g} s"),
                time.monotonic() - self._started,
            )
        else:
            outcome, duration = self._outcome, self._duration
        return _result(plan, outcome, duration)


def _result(plan: _Plan, outcome: CheckOutcome, duration: float) -> CheckResult:
    return CheckResult(
        name=plan.name,
        required=plan.required,
        status=outcome.status,
        message=outcome.message,
        duration=duration,
        facts=outcome.facts,
        tags=outcome.tags,
        source=plan.source,
    )


def _validated(outcome: object) -> CheckOutcome:
    """The outcome with plain-JSON facts and a tuple of tags; ValueError if it is invalid."""
    if not isinstance(outcome, CheckOutcome):
        raise ValueError(f"run() returned {type(outcome).__name__}, not a CheckOutcome")
    status = Status(outcome.status)
    try:
        # allow_nan=False: NaN and Infinity are not JSON; they would reach the matcher
        facts = json.loads(json.dumps(dict(outcome.facts), allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"facts are not JSON-serialisable: {exc}") from exc
    tags = tuple(outcome.tags)
    if not all(isinstance(tag, str) and tag for tag in tags):
        raise ValueError(f"tags must be non-empty strings: {tags!r}")
    return CheckOutcome(status, str(outcome.message), facts, tags)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _plan(check: Check, settings: CheckSettings) -> _Plan | CheckResult:
    """How to run ``check``, or its result straight away (invalid, or disabled)."""
    problem = protocol_problem(check)
    if problem is not None:
        try:
            name = str(check.name)
        except Exception:
            name = type(check).__qualname__
        return CheckResult(name, False, Status.FAILED, f"invalid check: {problem}", 0.0)
    timeout = settings.timeouts.get(check.name) or check.timeout or settings.default_timeout
    required = check.required or check.name in settings.required
    plan = _Plan(check, check.name, required, float(timeout), source_of(check))
    if check.name in settings.disabled:
        return _result(plan, CheckOutcome(Status.SKIPPED, "disabled by configuration"), 0.0)
    return plan


def run(
    ctx: CheckContext, settings: CheckSettings, checks: Sequence[Check] | None = None
) -> CheckReport:
    """Run ``checks`` (default: :func:`discover`) concurrently, each under its timeout."""
    began = time.monotonic()
    if checks is None:
        checks = discover(settings)
    if settings.options:
        ctx = replace(ctx, options={**ctx.options, **settings.options})
    planned = [_plan(check, settings) for check in checks]
    slots = [_Running(p, ctx) if isinstance(p, _Plan) else p for p in planned]
    for slot in slots:
        if isinstance(slot, _Running):
            slot.start()
    results = [slot.result() if isinstance(slot, _Running) else slot for slot in slots]
    results.extend(_missing_required(results, settings))
    report = CheckReport(tuple(results))
    _log_summary(report, time.monotonic() - began)
    return report


def _missing_required(results: list[CheckResult], settings: CheckSettings) -> list[CheckResult]:
    """A required check that is nowhere to be found is a FAILED required result."""
    present = {r.name for r in results} | settings.disabled
    return [
        CheckResult(name, True, Status.FAILED, "required check not found", 0.0, source="config")
        for name in sorted(settings.required - present)
    ]


def _log_summary(report: CheckReport, elapsed: float) -> None:
    counts = {status: 0 for status in Status}
    for result in report.results:
        counts[result.status] += 1
        level = logging.WARNING if result.failed else logging.DEBUG
        log.log(level, "check %s %s: %s", result.name, result.status.value, result.message)
    summary = ", ".join(f"{n} {status.value.lower()}" for status, n in counts.items() if n)
    log.info("checks: %s in %.2f s; node %s", summary, elapsed, "ok" if report.ok else "NOT ok")


# --- presentation ----------------------------------------------------------------


def format_table(report: CheckReport) -> str:
    """A plain-text table of the results: check, status, required, duration, message."""
    header = ("CHECK", "STATUS", "REQUIRED", "TIME", "MESSAGE")
    rows = [
        (
            r.name,
            r.status.value,
            "yes" if r.required else "no",
            f"{r.duration:.2f}s",
            _first_line(r.message),
        )
        for r in report.results
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(4)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True))
        + "  "
        + row[4]
        for row in [header, *rows]
    ]
    verdict = (
        "node OK"
        if report.ok
        else "node NOT OK: required check(s) failed: "
        + ", ".join(r.name for r in report.failed_required)
    )
    return "\n".join([*(line.rstrip() for line in lines), "", verdict])


def _first_line(message: str, width: int = 100) -> str:
    line = message.strip().splitlines()[0] if message.strip() else ""
    return line if len(line) <= width else line[: width - 3] + "..."
