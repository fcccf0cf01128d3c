"""JDL (the ClassAd subset DIRAC users write) -> attributes -> JobDescription.

Layers: :func:`parse` (syntax only), :func:`expand` and :func:`dumps` (parametric jobs
and JDL text, in :mod:`pilot.job.jdl_expand`), :meth:`JobDescription.from_attrs` (semantics).

Grammar: ``Name = value`` separated by ``;`` (optional after the last one), with or
without the outer ``[ ]``. Names ``[A-Za-z_][A-Za-z0-9_]*(.part)*`` keep their case;
a duplicate replaces the earlier value (and moves to the end). Comments: ``#``
anywhere outside strings, ``//`` where a token may start (``http://h`` stays a
word). Values: one-line ``"strings"`` (``\\"`` and ``\\\\`` are escapes, other
backslash pairs such as ``\\$`` are kept verbatim); bare words (``std.out``,
``LFN:/f``, ``%(X)s``, ``K=V``) are strings, except ``true``/``false`` in any case
and numbers (``0.``, ``-3``) within :data:`MAX_INT_DIGITS` digits and float range;
lists ``{a, b,}``; nested ``[ ]`` ClassAds; anything with operators (``!x``,
``other.Site == "X" && n >= 2``, ``f(a)``) is an :class:`Expression` holding its
source text. Limits: :data:`MAX_DEPTH`, :data:`MAX_TEXT_CHARS`, no control character
but tab in strings. Every failure is a :class:`JDLError`; syntax errors carry line and
column: ``f"{path}:{err}"`` reads ``FILE:LINE:COL: message``.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, TypeAlias

from pilot.backends.base import Inputs
from pilot.errors import ExitCode, PilotError

logger = logging.getLogger(__name__)

MAX_DEPTH = 64  # nested [ ], { } and ( ) beyond the top level
MAX_TEXT_CHARS = 4 * 1024 * 1024
MAX_INT_DIGITS = 1000
DEFAULT_MAX_JOBS = 1000
DEFAULT_CPU_TIME = 86400


class JDLError(PilotError):
    """A job description that does not parse or is semantically invalid."""

    exit_code = ExitCode.JDL_INVALID

    def __init__(self, message: str, line: int | None = None, col: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.col = col

    def __str__(self) -> str:
        where = "" if self.line is None else f"{self.line}:{self.col or 1}: "
        return where + self.message

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.message, self.line, self.col))


@dataclass(frozen=True)
class Expression:
    """An unevaluated ClassAd expression, kept as its source text."""

    text: str


Value: TypeAlias = str | int | float | bool | Expression | list["Value"] | dict[str, "Value"]

_DELIMS = r"""\s"'\[\]{};,#&|<>!=()\x00-\x1f\x7f\u2028\u2029\ufeff\ud800-\udfff"""
_PIECE = rf"%\([^{_DELIMS}]*\)|[^{_DELIMS}]|&(?!&)|\|(?!\|)"
_WORD_RE = re.compile(rf"(?:{_PIECE})(?:{_PIECE}|!(?!=)|=(?![=?!]))*")
_SKIP_RE = re.compile(r"(?:\s+|#[^\n]*|//[^\n]*)*")
ATTRIBUTE_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*")
_STRING_RE = re.compile(r'"((?:[^"\\\n\r]++|\\[^\n\r])*+)"')
_ESCAPE_RE = re.compile(r'\\(["\\])')
_BAD_IN_STRING_RE = re.compile("[\x00-\x08\x0b-\x1f\x7f]")
_SURROGATE_RE = re.compile("[\ud800-\udfff]")
_INT_RE = re.compile(r"[+-]?[0-9]+")
_FLOAT_RE = re.compile(
    r"[+-]?(?:[0-9]+\.[0-9]*(?:[eE][+-]?[0-9]+)?|\.[0-9]+(?:[eE][+-]?[0-9]+)?|[0-9]+[eE][+-]?[0-9]+)"
)
_BINOP_RE = re.compile(r"\|\||&&|==|!=|=\?=|=!=|<=|>=|<|>|\+|-|\*|/|%|\?|:")
_CONTINUES_RE = re.compile(rf"(?:{_BINOP_RE.pattern}|\()")
_OPERAND_RE = re.compile(r"[\w.$]+")
_UNARY = "!-+~"


def _describe_char(ch: str) -> str:
    if ch and ch.isprintable() and not ch.isspace():
        return repr(ch)
    return f"character U+{ord(ch):04X}" if ch else "end of input"


class _Parser:
    """Recursive descent; ``end`` is where the last token ended (expression text)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.end = 0

    def error(self, message: str, pos: int | None = None) -> JDLError:
        at = self.pos if pos is None else pos
        line = self.text.count("\n", 0, at) + 1
        col = at - (self.text.rfind("\n", 0, at) + 1) + 1
        return JDLError(message, line, col)

    def peek(self) -> str:
        return self.text[self.pos : self.pos + 1]

    def skip(self) -> None:
        match = _SKIP_RE.match(self.text, self.pos)
        if match is not None:
            self.pos = match.end()

    def found(self) -> str:
        word = _WORD_RE.match(self.text, self.pos)
        return _describe_char(self.peek()) if word is None else repr(word.group()[:40])

    def check_depth(self, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise self.error(f"nesting deeper than {MAX_DEPTH} levels")

    def document(self) -> dict[str, Value]:
        self.skip()
        if self.pos >= len(self.text):
            raise self.error("empty job description: no attributes", 0)
        if self.peek() != "[":
            return self.attributes(0, None)
        attrs = self.classad(0)
        self.skip()
        if self.pos < len(self.text):
            raise self.error(f"unexpected {self.found()} after the closing ']'")
        return attrs

    def classad(self, depth: int) -> dict[str, Value]:
        self.check_depth(depth)
        self.pos += 1
        return self.attributes(depth, self.pos - 1)

    def attributes(self, depth: int, open_pos: int | None) -> dict[str, Value]:
        """Attributes up to the ``]`` closing ``open_pos`` (or the end of input)."""
        attrs: dict[str, Value] = {}
        while True:
            self.skip()
            ch = self.peek()
            if ch == ";":
                self.pos += 1
                continue
            if not ch and open_pos is not None:
                raise self.error("'[' is never closed", open_pos)
            if not ch or (ch == "]" and open_pos is not None):
                self.pos = self.end = self.pos + len(ch)
                return attrs
            key = self.name()
            self.assign(key)
            attrs.pop(key, None)
            attrs[key] = self.value(depth)
            self.skip()
            if self.peek() == ";":
                self.pos += 1
            elif self.peek() in (")", "}"):
                raise self.error(f"unexpected {self.peek()!r} without a matching opening bracket")
            elif self.peek() not in ("", "]"):
                raise self.error(f"missing ';' after the value of {key!r} (found {self.found()})")

    def name(self) -> str:
        match = ATTRIBUTE_NAME_RE.match(self.text, self.pos)
        if match is None:
            if self.peek() in ("=", "]"):
                what = "'=' without an attribute name" if self.peek() == "=" else "']'"
                raise self.error(f"unexpected {what}")
            raise self.error(f"expected an attribute name, found {self.found()}")
        self.pos = match.end()
        return match.group()

    def assign(self, key: str) -> None:
        self.skip()
        if self.peek() != "=" or self.text.startswith("==", self.pos):
            what = _describe_char(self.peek())
            raise self.error(f"expected '=' after attribute name {key!r}, found {what}")
        self.pos += 1

    def value(self, depth: int) -> Value:
        self.skip()
        start = self.pos
        ch = self.peek()
        if ch == "{":
            return self.list_(depth + 1)
        if ch == "[":
            return self.classad(depth + 1)
        if ch == '"':
            return self.maybe_expression(start, depth, self.string())
        word = _WORD_RE.match(self.text, self.pos)
        if word is not None:
            self.pos = self.end = word.end()
            return self.maybe_expression(start, depth, self.literal(word.group()))
        if ch and ch in "(!":
            return self.expression(start, depth)
        if not ch or ch in ";,}]":
            raise self.error("missing value")
        raise self.error(f"unexpected {_describe_char(ch)} at the start of a value")

    def list_(self, depth: int) -> list[Value]:
        self.check_depth(depth)
        open_pos = self.pos
        self.pos += 1
        items: list[Value] = []
        while True:
            self.skip()
            ch = self.peek()
            if ch == "}":
                self.pos += 1
                self.end = self.pos
                return items
            if not ch:
                raise self.error("'{' is never closed", open_pos)
            if ch == ",":
                raise self.error("empty list element")
            items.append(self.value(depth))
            self.skip()
            ch = self.peek()
            if ch == ",":
                self.pos += 1
            elif ch and ch != "}":
                raise self.error(f"expected ',' or '}}' in list, found {self.found()}")

    def string(self) -> str:
        match = _STRING_RE.match(self.text, self.pos)
        if match is None:
            raise self.error("unterminated string (a string must close on the line it opens)")
        body = match.group(1)
        bad = _BAD_IN_STRING_RE.search(body)
        if bad is not None:
            char = _describe_char(bad.group())
            raise self.error(f"{char} inside a string", self.pos + 1 + bad.start())
        self.pos = self.end = match.end()
        return _ESCAPE_RE.sub(r"\1", body)

    @staticmethod
    def literal(word: str) -> Value:
        """A bare word: boolean, number (if representable) or else a string."""
        if word.lower() in ("true", "false"):
            return word.lower() == "true"
        number = as_number(word)
        return word if number is None else number

    def maybe_expression(self, start: int, depth: int, atom: Value) -> Value:
        """``atom``, or the expression it starts if an operator follows it."""
        atom_end = self.pos
        self.skip()
        where = self.pos
        if not _CONTINUES_RE.match(self.text, where):
            self.pos = atom_end
            return atom
        expression = self.expression(start, depth)
        if self.end <= atom_end:  # e.g. "0//(": the operator was inside a comment
            raise self.error(f"unexpected {_describe_char(self.text[where])}", where)
        return expression

    def expression(self, start: int, depth: int) -> Expression:
        self.pos = start
        self.expr(depth)
        return Expression(self.text[start : self.end])

    def expr(self, depth: int) -> None:
        self.check_depth(depth)
        self.unary(depth)
        while True:
            after = self.pos
            self.skip()
            match = _BINOP_RE.match(self.text, self.pos)
            if match is None:
                self.pos = after
                return
            self.pos = match.end()
            self.unary(depth)

    def unary(self, depth: int) -> None:
        self.skip()
        while self.peek() and self.peek() in _UNARY:
            self.pos += 1
            self.skip()
        self.primary(depth)

    def primary(self, depth: int) -> None:
        ch = self.peek()
        if ch == '"':
            self.string()
        elif ch == "(":
            self.sequence(depth + 1, ")", single=True)
        elif ch == "{":
            self.sequence(depth + 1, "}", single=False)
        else:
            match = _OPERAND_RE.match(self.text, self.pos)
            if match is None:
                raise self.error(f"expected an operand in expression, found {self.found()}")
            self.pos = self.end = match.end()
            self.skip()
            if self.peek() == "(":
                self.sequence(depth + 1, ")", single=False)
            else:
                self.pos = self.end

    def sequence(self, depth: int, closer: str, single: bool) -> None:
        """``( expr )``, call arguments ``( a, b )`` or a list ``{ a, b }``."""
        self.check_depth(depth)
        open_pos = self.pos
        self.pos += 1
        count = 0
        while True:
            self.skip()
            ch = self.peek()
            if not ch:
                raise self.error(f"{self.text[open_pos]!r} is never closed", open_pos)
            if ch == closer and not (single and count == 0):
                self.pos += 1
                self.end = self.pos
                return
            if count and ch == "," and not single:
                self.pos += 1
            elif count:
                raise self.error(f"expected {closer!r} in expression, found {self.found()}")
            self.expr(depth)
            count += 1


def _decode(data: str | bytes | bytearray) -> str:
    if isinstance(data, bytes | bytearray):
        if len(data) > 4 * MAX_TEXT_CHARS:
            raise JDLError(f"job description too large ({len(data)} bytes)")
        raw = bytes(data)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            prefix = raw[: exc.start]
            col = len(prefix[prefix.rfind(b"\n") + 1 :].decode("utf-8", "replace")) + 1
            message = f"invalid UTF-8 (byte 0x{raw[exc.start]:02x})"
            raise JDLError(message, prefix.count(b"\n") + 1, col) from None
    elif isinstance(data, str):
        text = data
    else:
        raise TypeError(f"JDL text must be str or bytes, not {type(data).__name__}")
    return text[1:] if text.startswith("\ufeff") else text


def parse(text: str | bytes) -> dict[str, Value]:
    """Parse JDL text (syntax only) into insertion-ordered attributes."""
    source = _decode(text)
    if len(source) > MAX_TEXT_CHARS:
        raise JDLError(f"job description too large ({len(source)} characters)")
    parser = _Parser(source)
    surrogate = _SURROGATE_RE.search(source)
    if surrogate is not None:
        raise parser.error("invalid character (lone surrogate)", surrogate.start())
    return parser.document()


def _jsonable(value: Value) -> Any:
    if isinstance(value, Expression):
        return value.text
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    if isinstance(value, Mapping):
        return {key: _jsonable(item) for key, item in value.items()}
    return value


def to_jsonable(attrs: Mapping[str, Value]) -> dict[str, Any]:
    """Attributes as JSON-ready data; expressions become their text."""
    return {key: _jsonable(value) for key, value in attrs.items()}


def dumps(attrs: Mapping[str, Value]) -> str:
    """Serialise attributes as JDL text; ``parse(dumps(a)) == a``."""
    from pilot.job import jdl_expand  # late: jdl_expand builds on this module

    return jdl_expand.dumps(attrs)


def expand(attrs: Mapping[str, Value], max_jobs: int = DEFAULT_MAX_JOBS) -> list[dict[str, Value]]:
    """One attribute dict per job (``[attrs]`` if not parametric); see jdl_expand."""
    from pilot.job import jdl_expand

    return jdl_expand.expand(attrs, max_jobs)


class _Folded(dict[str, Value]):
    """Attributes with a case-folded index built once: ``from_attrs`` looks up ~30 names,
    and scanning every attribute for each of them was most of its time."""

    def __init__(self, attrs: Mapping[str, Value]) -> None:
        super().__init__(attrs)
        self.hits = {name.casefold(): (name, value) for name, value in attrs.items()}


def _lookup(attrs: Mapping[str, Value], key: str) -> tuple[str, Value] | None:
    """(name as written, value) of ``key`` ignoring case; the last one written wins."""
    if isinstance(attrs, _Folded):
        return attrs.hits.get(key.casefold())
    folded = key.casefold()
    hits = [(name, value) for name, value in attrs.items() if name.casefold() == folded]
    return hits[-1] if hits else None


def get(attrs: Mapping[str, Value], key: str, default: Value | None = None) -> Value | None:
    """Case-insensitive attribute lookup (DIRAC users write ``Jobname``)."""
    hit = _lookup(attrs, key)
    return default if hit is None else hit[1]


def as_number(value: Value) -> int | float | None:
    """``value`` as a number if it is one or a numeric string (``"10"``); else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return value
    if isinstance(value, str):
        text = value.strip()
        if _INT_RE.fullmatch(text) and len(text.lstrip("+-")) <= MAX_INT_DIGITS:
            return int(text)
        if _FLOAT_RE.fullmatch(text) and math.isfinite(float(text)):
            return float(text)
    return None


_BOOLS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
_TAGS = {tag.lower(): tag for tag in ("GPU", "MultiProcessor", "WholeNode")}  # spellings


def _kind(value: Value) -> str:
    if isinstance(value, Expression):
        return f"the expression {value.text[:40]!r}"
    kinds = ((bool, "a boolean"), (list | tuple, "a list"), (Mapping, "a ClassAd"))
    return next((kind for types, kind in kinds if isinstance(value, types)), repr(value)[:40])


def _scalar_text(name: str, value: Value) -> str:
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        return str(value)
    raise JDLError(f"{name} must be a string, got {_kind(value)}")


def _text(attrs: Mapping[str, Value], key: str) -> str | None:
    """``key`` as text; absent and empty both give None."""
    hit = _lookup(attrs, key)
    return None if hit is None else _scalar_text(*hit) or None


def _strings(attrs: Mapping[str, Value], *keys: str, split: bool = False) -> tuple[str, ...]:
    """``keys`` together as strings (a scalar counts as a 1-list; empty entries and
    duplicates dropped); ``split`` also splits at commas and strips."""
    hits = [hit for key in keys if (hit := _lookup(attrs, key)) is not None]
    if not hits:
        return ()
    out: dict[str, None] = {}
    for name, value in hits:
        for item in value if isinstance(value, list | tuple) else [value]:
            text = _scalar_text(f"each entry of {name}", item)
            parts = [part.strip() for part in text.split(",")] if split else [text]
            out.update(dict.fromkeys(parts))
    out.pop("", None)
    return tuple(out)


def _int(attrs: Mapping[str, Value], key: str, minimum: int = 0) -> int | None:
    hit = _lookup(attrs, key)
    if hit is None:
        return None
    number = as_number(hit[1])
    if isinstance(number, float) and number.is_integer():
        number = int(number)
    if not isinstance(number, int):
        raise JDLError(f"{hit[0]} must be an integer, got {_kind(hit[1])}")
    if number < minimum:
        raise JDLError(f"{hit[0]} must be at least {minimum}, got {number}")
    return number


def _bool(attrs: Mapping[str, Value], key: str) -> bool:
    hit = _lookup(attrs, key)
    value: Value = False if hit is None else hit[1]
    text = str(value).lower() if isinstance(value, str | int) else ""
    if text in _BOOLS:
        return _BOOLS[text]
    raise JDLError(f"{key} must be true or false, got {_kind(value)}")


# quotes, a backslash, or white space other than the four shlex splits at
_SHELL_SPECIAL = re.compile(r"[\"'\\]|[^\S \t\r\n]")


def _arguments(attrs: Mapping[str, Value]) -> tuple[str, ...]:
    hit = _lookup(attrs, "Arguments")
    if hit is None:
        return ()
    value = hit[1]
    text = value.text if isinstance(value, Expression) else _scalar_text(*hit)
    if not _SHELL_SPECIAL.search(text):  # nothing quoted or escaped: shlex would only split
        return tuple(text.split())
    try:
        return tuple(shlex.split(text))
    except ValueError as exc:
        raise JDLError(f"{hit[0]}: cannot split {text[:60]!r}: {exc}") from None


def _environment(attrs: Mapping[str, Value]) -> Mapping[str, str]:
    env: dict[str, str] = {}
    for item in _strings(attrs, "ExecutionEnvironment"):
        key, sep, val = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key.strip()):
            raise JDLError(f"ExecutionEnvironment entry {item[:60]!r} is not NAME=VALUE")
        env[key.strip()] = val
    return MappingProxyType(env)


def _cores(attrs: Mapping[str, Value]) -> tuple[int, int | None, bool, int, tuple[str, ...]]:
    """(min, max processors, whole node, GPUs, tags derived like DIRAC does)."""
    exact = _int(attrs, "NumberOfProcessors", 1)
    low = _int(attrs, "MinNumberOfProcessors", 1) or 1
    high = _int(attrs, "MaxNumberOfProcessors", 1)
    if exact is not None:
        low = high = exact
    elif high is not None and high < low:
        raise JDLError(f"MaxNumberOfProcessors {high} is below MinNumberOfProcessors {low}")
    whole_node = _bool(attrs, "WholeNode")
    gpus = _int(attrs, "NumberOfGPUs") or 0
    tags = {_TAGS.get(tag.lower(), tag) for tag in _strings(attrs, "Tags", "Tag", split=True)}
    if exact is not None and exact > 1:
        tags.update((f"{exact}Processors", "MultiProcessor"))
    if low > 1:
        tags.add("MultiProcessor")
    if whole_node:
        tags.update(("WholeNode", "MultiProcessor"))
    if gpus > 0 or "GPU" in tags:
        tags.add("GPU")
    return low, high, whole_node, gpus, tuple(sorted(tags))


@dataclass(frozen=True)
class JobDescription:
    """The typed, validated view of one (expanded) job's attributes."""

    attrs: Mapping[str, Value]
    executable: str
    arguments: tuple[str, ...]
    std_output: str | None
    std_error: str | None
    input_sandbox: tuple[str, ...]
    output_sandbox: tuple[str, ...]
    input_data: tuple[str, ...]
    output_data: tuple[str, ...]
    output_se: str | None
    output_path: str | None
    cpu_time: int
    priority: int
    sites: tuple[str, ...]
    banned_sites: tuple[str, ...]
    platforms: tuple[str, ...]
    grid_ces: tuple[str, ...]
    tags: tuple[str, ...]
    min_processors: int
    max_processors: int | None
    whole_node: bool
    number_of_gpus: int
    max_ram_mb: int | None
    job_name: str | None
    job_type: str | None
    vo: str | None
    execution_environment: Mapping[str, str]

    @functools.cached_property
    def inputs(self) -> Inputs:
        """The ``InputSandbox`` entries classified (once) by kind."""
        return Inputs.of(self.input_sandbox)

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Value]) -> JobDescription:
        """Validate ``attrs`` (as parsed or expanded) -> JobDescription, or JDLError."""
        attrs = _Folded(attrs)
        executable = _text(attrs, "Executable")
        if executable is None or not executable.strip():
            raise JDLError("Executable is missing or empty")
        cpu_time = _int(attrs, "CPUTime")
        cpu_time = _int(attrs, "MaxCPUTime") if cpu_time is None else cpu_time
        priority = _int(attrs, "Priority", -(2**31))
        low, high, whole_node, gpus, tags = _cores(attrs)
        sites = _strings(attrs, "Site", "Sites", split=True)
        return cls(
            attrs=MappingProxyType(dict(attrs)),
            executable=executable,
            arguments=_arguments(attrs),
            std_output=_text(attrs, "StdOutput"),
            std_error=_text(attrs, "StdError"),
            input_sandbox=_strings(attrs, "InputSandbox"),
            output_sandbox=_strings(attrs, "OutputSandbox"),
            input_data=_strings(attrs, "InputData"),
            output_data=_strings(attrs, "OutputData"),
            output_se=",".join(_strings(attrs, "OutputSE", split=True)) or None,
            output_path=_text(attrs, "OutputPath"),
            cpu_time=DEFAULT_CPU_TIME if cpu_time is None else cpu_time,
            priority=1 if priority is None else priority,
            sites=tuple(site for site in sites if site.upper() != "ANY"),
            banned_sites=_strings(attrs, "BannedSites", "BannedSite", split=True),
            platforms=_strings(attrs, "Platform", "Platforms", split=True),
            grid_ces=_strings(attrs, "GridCE", "GridCEs", split=True),
            tags=tags,
            min_processors=low,
            max_processors=high,
            whole_node=whole_node,
            number_of_gpus=gpus,
            max_ram_mb=_int(attrs, "MaxRAM") or None,  # 0: not given (DIRAC's convention)
            job_name=_text(attrs, "JobName"),
            job_type=_text(attrs, "JobType"),
            vo=_text(attrs, "VirtualOrganization"),
            execution_environment=_environment(attrs),
        )


def load(text: str | bytes) -> JobDescription:
    """``parse`` + ``JobDescription.from_attrs`` (parametric JDL is not expanded).

    The pilot calls it once per matched job and hands the description on to every stage
    (slot allocation, the runner, staging, the backend's fetch)."""
    return JobDescription.from_attrs(parse(text))
