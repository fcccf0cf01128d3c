"""Property tests for pilot.job.jdl.

1. Whatever the input (random text, random JDL tokens, mutated corpus files, random
   bytes, deep nesting), parse/expand/from_attrs either succeed or raise JDLError,
   and parse errors always carry a line and a column. Whatever parses also survives
   ``parse(dumps(x)) == x`` and ``json.dumps(to_jsonable(x))``.
2. ``parse(dumps(a)) == a`` for generated attribute dicts.

The corpus seeds come from ``tests/data/jdl-corpus``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pilot.job import jdl
from pilot.job.jdl import Expression, JDLError, JobDescription
from tests.test_jdl import same


def corpus_texts() -> list[str]:
    root = Path(__file__).resolve().parent / "data" / "jdl-corpus"
    return sorted(path.read_text(encoding="utf-8") for path in root.glob("*.jdl"))


CORPUS = corpus_texts()

TOKENS = [
    *"[]{}();,=\"'\\#/!&|<>%$:.-+*?~ \t\n",
    "\r\n", "==", "!=", "&&", "||", ">=", "=?=", "//", "/*", "\\\"", "\\\\", "\\$",
    "Executable", "Arguments", "Parameters", "Parameters.A", "ParameterStart",
    "ParameterStep.A", "ParameterFactor", "JobName", "CPUTime", "Site", "Tags",
    "NumberOfProcessors", "WholeNode", "ExecutionEnvironment", "InputSandbox",
    "%s", "%n", "%(A)s", "%(", '"x"', '"%s"', '"a b"', '""', "1", "0.", "-3", "1e5",
    "1e999", "9" * 1200, "true", "FALSE", "std.out", "LFN:/vo/f", "http://h/x",
    "other.Site", "Member(", "ANY", "MYVAR=3", "\x00", "\x1b", "\ufeff", "\u00a0",
    "\u2028", "\ud800", "é", "雪",
]  # fmt: skip

SAMPLES = 10_000


def tokens() -> st.SearchStrategy[str]:
    return st.lists(st.sampled_from(TOKENS), max_size=60).map("".join)


@st.composite
def mutated_corpus(draw: st.DrawFn) -> str:
    text = draw(st.sampled_from(CORPUS))
    for _ in range(draw(st.integers(1, 4))):
        start = draw(st.integers(0, len(text)))
        end = min(len(text), start + draw(st.integers(0, 12)))
        token = draw(st.sampled_from(TOKENS))
        op = draw(st.sampled_from(["delete", "insert", "replace", "duplicate"]))
        if op == "delete":
            text = text[:start] + text[end:]
        elif op == "insert":
            text = text[:start] + token + text[start:]
        elif op == "replace":
            text = text[:start] + token + text[end:]
        else:
            text = text[:end] + text[start:end] + text[end:]
    return text


def nesting() -> st.SearchStrategy[str]:
    openers = st.sampled_from(["{", "(", "[A=", "{[A=", "f(", "!", "-(", "{{"])
    return st.builds(
        lambda prefix, opener, depth, close: prefix + opener * depth + "x" + close * depth,
        st.sampled_from(["A = ", "[A = ", ""]),
        openers,
        st.integers(0, 200),
        st.sampled_from(["}", ")", "]", "", ";"]),
    )


def inputs() -> st.SearchStrategy[str | bytes]:
    seeds: list[st.SearchStrategy[Any]] = [st.text(max_size=200), tokens(), nesting()]
    seeds.append(st.binary(max_size=200))
    if CORPUS:
        seeds.append(mutated_corpus())
        seeds.append(mutated_corpus().map(lambda t: t.encode("utf-8", "surrogatepass")))
    return st.one_of(seeds)


def check_one(data: str | bytes) -> str:
    """Drive every stage; return how far it got. Only JDLError may escape a stage."""
    try:
        attrs = jdl.parse(data)
    except JDLError as exc:
        assert exc.line is not None and exc.col is not None, exc
        assert str(exc) == f"{exc.line}:{exc.col}: {exc.message}" and exc.message
        return "parse-error"
    assert same(jdl.parse(jdl.dumps(attrs)), attrs)
    json.dumps(jdl.to_jsonable(attrs))
    try:
        jobs = jdl.expand(attrs, max_jobs=50)
    except JDLError as exc:
        assert exc.message
        return "expand-error"
    for job in jobs:
        assert same(jdl.parse(jdl.dumps(job)), job)
        try:
            JobDescription.from_attrs(job)
        except JDLError as exc:
            assert exc.message
            return "model-error"
    return "ok"


def test_corpus_seeds_are_present() -> None:
    assert len(CORPUS) >= 50, "JDL corpus not found under tests/data/jdl-corpus"
    outcomes = {check_one(text) for text in CORPUS}
    assert outcomes >= {"ok", "parse-error", "expand-error", "model-error"}


@settings(
    max_examples=SAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(inputs())
def test_any_input_parses_or_raises_jdl_error(data: str | bytes) -> None:
    check_one(data)


# ------------------------------------------------------------------ round trip

ALNUM = "abcXYZ_019"
NAMES = st.builds(
    lambda head, body, suffix: head + body + suffix,
    st.sampled_from("aZ_"),
    st.text(ALNUM, max_size=6),
    st.one_of(st.just(""), st.text(ALNUM, min_size=1, max_size=3).map(".{}".format)),
)
# everything a JDL string can hold: no line breaks, no control character but tab,
# no lone surrogate (C1 controls are allowed too; "\x85" stands in for them)
CHARS = st.characters(codec="utf-8", exclude_categories=["Cc"], include_characters="\t\x85")
STRINGS = st.one_of(
    st.text(CHARS, max_size=20),
    st.sampled_from(["", "true", "10", "0.", "%s", 'a"b', "\\", "\\$X", "#x", "//", "x == 1"]),
)
OPERANDS = st.sampled_from(["other.Site", "x", "1", "2.5", '"X"', "true", "f(a, 2)", "(y)"])
OPERATORS = st.sampled_from(["==", "!=", "&&", "||", ">=", "<", "+", "=?="])
EXPRESSIONS = st.one_of(
    st.builds(lambda a, op, b: f"{a} {op} {b}", OPERANDS, OPERATORS, OPERANDS),
    st.builds(lambda a: f"!{a}", OPERANDS),
    st.builds(lambda a, b: f"Member({a}, {{{b}}})", OPERANDS, OPERANDS),
).map(Expression)
SCALARS = st.one_of(
    STRINGS,
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    EXPRESSIONS,
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(NAMES, inner, max_size=4),
    max_leaves=10,
)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(NAMES, VALUES, max_size=6))
def test_dumps_round_trip(attrs: dict[str, jdl.Value]) -> None:
    text = jdl.dumps(attrs)
    assert same(jdl.parse(text), attrs), text
    assert same(jdl.parse(text.encode("utf-8")), attrs)


def nested_expression(depth: int) -> dict[str, Any]:
    value: Any = Expression("(a || b) && f(x)")
    for level in range(depth):
        value = [value] if level % 2 else {"K": value}
    return {"A": value}


@pytest.mark.parametrize("depth", [1, 30, jdl.MAX_DEPTH - 1])
def test_round_trip_at_depth(depth: int) -> None:
    attrs = nested_expression(depth)
    assert same(jdl.parse(jdl.dumps(attrs)), attrs)


def test_dumps_refuses_an_expression_that_would_nest_too_deep() -> None:
    # its parentheses would be level MAX_DEPTH + 1 once written out
    with pytest.raises(JDLError, match="not a JDL expression"):
        jdl.dumps(nested_expression(jdl.MAX_DEPTH))
