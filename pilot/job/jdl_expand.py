"""Parametric expansion and serialisation of JDL attributes (see :mod:`pilot.job.jdl`).

Parametric jobs follow DIRAC's ``ParametricJob`` utility:

* ``Parameters`` (a count or a list) and ``Parameters.<Name>`` (lists) define the
  vectors; all lengths must agree. ``ParameterStart``, ``ParameterStep`` and
  ``ParameterFactor`` (optionally ``.<Name>``) define arithmetic/geometric
  sequences: ``v[0] = start``, ``v[i] = v[i-1] * factor + step`` (defaults 1, 0, 1;
  ints stay ints unless one of them is a float).
* In every string value of each job (inside lists and nested ClassAds too) ``%s``
  becomes the unnamed sequence's value, ``%(Name)s`` the named one and ``%n`` the
  job index, zero-padded like DIRAC (``00``..``19`` for 20 jobs). A string that is
  exactly one placeholder whose value is a list (or ClassAd) becomes that value; in
  a list it is spliced in. Expressions are left alone, and so are placeholders of
  unknown sequences.
* The expanded jobs no longer contain the ``Parameters*`` attributes.
"""

from __future__ import annotations

import copy
import logging
import math
import re
from collections.abc import Mapping

from pilot.job.jdl import (
    ATTRIBUTE_NAME_RE,
    MAX_DEPTH,
    MAX_INT_DIGITS,
    Expression,
    JDLError,
    Value,
    as_number,
    parse,
)

logger = logging.getLogger(__name__)

_FIELDS = {
    "parameters": "values",
    "parameterstart": "start",
    "parameterstep": "step",
    "parameterfactor": "factor",
}
_DEFAULTS: dict[str, int] = {"start": 1, "step": 0, "factor": 1}
_PLACEHOLDER_RE = re.compile(r"%(?:\(([^()]+)\)s|([sn]))")
_MAX_VALUE_BITS = 4096
_UNWRITABLE_RE = re.compile("[\x00-\x08\x0a-\x1f\x7f\ud800-\udfff]")

# sequence name ("" for the unnamed one) -> field -> (attribute name, value)
_Groups = dict[str, dict[str, tuple[str, Value]]]


def _parameter_field(key: str) -> tuple[str, str] | None:
    """(field, sequence name) if ``key`` is one of the ``Parameter*`` attributes."""
    head, _, name = key.partition(".")
    field = _FIELDS.get(head.lower())
    return None if field is None else (field, name)


def _groups(attrs: Mapping[str, Value]) -> _Groups:
    groups: _Groups = {}
    for key, value in attrs.items():
        found = _parameter_field(key)
        if found is not None:
            field, name = found
            groups.setdefault(name, {})[field] = (key, value)
    return groups


def _count(key: str, value: Value, named: bool) -> int:
    if isinstance(value, list):
        return len(value)
    number = as_number(value)
    if named or not isinstance(number, int):
        kind = "a list" if named else "a positive integer or a list"
        raise JDLError(f"{key} must be {kind}, got {dumps_value(value)[:60]}")
    return number


def _vector_length(groups: _Groups, max_jobs: int) -> int:
    count: int | None = None
    for name, group in groups.items():
        if "values" not in group:
            continue
        key, value = group["values"]
        this = _count(key, value, named=bool(name))
        if count is not None and this != count:
            raise JDLError(f"parameter vectors differ in length: {key} has {this}, not {count}")
        if this <= 0:
            raise JDLError(f"{key}: the number of parametric jobs must be positive, got {this}")
        if this > max_jobs:
            raise JDLError(f"{key}: {this} parametric jobs exceed the limit of {max_jobs}")
        count = this
    if count is None:
        raise JDLError("no Parameters attribute")
    return count


def _sequence(group: dict[str, tuple[str, Value]], count: int) -> list[Value]:
    if "values" in group and isinstance(group["values"][1], list):
        return list(group["values"][1])
    numbers: dict[str, int | float] = {}
    for field, default in _DEFAULTS.items():
        key, value = group.get(field, (field, default))
        number = as_number(value)
        if number is None:
            raise JDLError(f"{key} must be a number, got {dumps_value(value)[:60]}")
        numbers[field] = number
    if any(isinstance(number, float) for number in numbers.values()):
        numbers = {field: float(number) for field, number in numbers.items()}
    values: list[Value] = [numbers["start"]]
    current = numbers["start"]
    for _ in range(1, count):
        current = current * numbers["factor"] + numbers["step"]
        if isinstance(current, int):
            too_big = abs(current).bit_length() > _MAX_VALUE_BITS
        else:
            too_big = not math.isfinite(current)
        if too_big:
            raise JDLError("parametric sequence grows too large")
        values.append(current)
    return values


def _as_text(value: Value) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, Expression):
        return value.text
    return dumps_value(value)


class _Job:
    """Placeholder values for job number ``index``."""

    def __init__(self, index: str, values: Mapping[str, Value]) -> None:
        self.index = index
        self.values = values

    def lookup(self, match: re.Match[str]) -> Value | None:
        if match.group(2) == "n":
            return self.index
        return self.values.get("" if match.group(2) == "s" else match.group(1))

    def whole(self, text: str) -> Value | None:
        """The list/ClassAd value ``text`` stands for when it is one placeholder."""
        match = _PLACEHOLDER_RE.fullmatch(text)
        value = None if match is None else self.lookup(match)
        return copy.deepcopy(value) if isinstance(value, list | dict) else None

    def text(self, match: re.Match[str]) -> str:
        value = self.lookup(match)
        return match.group() if value is None else _as_text(value)

    def apply(self, value: Value, depth: int = 0) -> Value:
        if depth > MAX_DEPTH:
            raise JDLError(f"value nested deeper than {MAX_DEPTH} levels")
        if isinstance(value, str):
            whole = self.whole(value)
            return _PLACEHOLDER_RE.sub(self.text, value) if whole is None else whole
        if isinstance(value, dict):
            return {key: self.apply(item, depth + 1) for key, item in value.items()}
        if not isinstance(value, list):
            return value
        out: list[Value] = []
        for item in value:
            whole = self.whole(item) if isinstance(item, str) else None
            if isinstance(whole, list):
                out.extend(whole)
            else:
                out.append(self.apply(item, depth + 1))
        return out


def expand(attrs: Mapping[str, Value], max_jobs: int = 1000) -> list[dict[str, Value]]:
    """One attribute dict per job; ``[dict(attrs)]`` when there is no ``Parameters``
    or ``Parameters.<Name>`` attribute. Raises JDLError for inconsistent vectors or
    more than ``max_jobs`` jobs."""
    groups = _groups(attrs)
    if not any("values" in group for group in groups.values()):
        return [dict(attrs)]
    count = _vector_length(groups, max_jobs)
    sequences = {name: _sequence(group, count) for name, group in groups.items()}
    base = {key: value for key, value in attrs.items() if _parameter_field(key) is None}
    width = len(str(count - 1))
    jobs = []
    for index in range(count):
        job = _Job(str(index).zfill(width), {name: seq[index] for name, seq in sequences.items()})
        jobs.append({key: job.apply(value) for key, value in base.items()})
    logger.debug("expanded a parametric job description into %d jobs", count)
    return jobs


def _dump_key(key: str) -> str:
    if not isinstance(key, str):
        raise TypeError(f"attribute names must be str, not {type(key).__name__}")
    if not ATTRIBUTE_NAME_RE.fullmatch(key):
        raise JDLError(f"invalid attribute name {key!r}")
    return key


def _dump_expression(expr: Expression, depth: int) -> str:
    """``expr.text`` if it parses back to ``expr`` at this nesting depth."""
    nest = depth - 1
    value: Value | None
    try:
        value = parse(f"X = {'{' * nest}{expr.text}{'}' * nest}")["X"]
        for _ in range(nest):
            value = value[0] if isinstance(value, list) and len(value) == 1 else None
    except JDLError:
        value = None
    if value != expr:
        raise JDLError(f"not a JDL expression: {expr.text[:60]!r}")
    return expr.text


def _dump_value(value: Value, depth: int) -> str:
    """JDL text of ``value``; ``depth`` is the nesting a container here would have."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        if abs(value).bit_length() > MAX_INT_DIGITS * 4 or len(str(abs(value))) > MAX_INT_DIGITS:
            raise JDLError(f"integer with more than {MAX_INT_DIGITS} digits")
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise JDLError(f"{value!r} cannot be written as JDL")
        return repr(value)
    if isinstance(value, str):
        if _UNWRITABLE_RE.search(value):
            raise JDLError(f"string {value[:40]!r} has a line break or control character")
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, Expression):
        return _dump_expression(value, depth)
    if depth > MAX_DEPTH:
        raise JDLError(f"value nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, list | tuple):
        return "{" + ", ".join(_dump_value(item, depth + 1) for item in value) + "}"
    if isinstance(value, Mapping):
        body = "; ".join(f"{_dump_key(k)} = {_dump_value(v, depth + 1)}" for k, v in value.items())
        return f"[ {body} ]"
    raise TypeError(f"not a JDL value: {type(value).__name__}")


def dumps_value(value: Value) -> str:
    """JDL text of one value, as written after ``Name =``."""
    return _dump_value(value, 1)


def dumps(attrs: Mapping[str, Value]) -> str:
    """Serialise attributes as JDL text; ``parse(dumps(a)) == a``."""
    lines = ["["]
    lines.extend(f"    {_dump_key(key)} = {dumps_value(value)};" for key, value in attrs.items())
    lines.append("]")
    return "\n".join(lines) + "\n"
