"""pilot.job.jdl: the JDL corpus, every grammar feature and error, parametric
expansion, serialisation and the JobDescription semantics.

The corpus lives in ``tests/data/jdl-corpus`` (files, MANIFEST.tsv with the expected
attributes, NOTES.md on where they come from). Without it the corpus tests fail with a
message saying so; they never skip.
"""

from __future__ import annotations

import json
import pickle
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pilot.errors import ExitCode, PilotError
from pilot.job import jdl
from pilot.job.jdl import Expression, JDLError, JobDescription

REPO = Path(__file__).resolve().parents[1]
MISSING = "<absent>"


CORPUS_DIR = REPO / "tests" / "data" / "jdl-corpus"


def corpus_dir() -> Path:
    return CORPUS_DIR


@dataclass(frozen=True)
class Row:
    file: str
    valid: bool
    expected: dict[str, Any]
    notes: str


def manifest_rows() -> list[Row]:
    path = corpus_dir() / "MANIFEST.tsv"
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t")
    assert header == ["file", "source", "valid", "expected", "notes"], header
    rows = []
    for line in lines[1:]:
        file, _source, valid, expected, notes = line.split("\t")
        rows.append(Row(file, valid == "yes", json.loads(expected), notes))
    return rows


ROWS = manifest_rows()


def params(rows: list[Row]) -> list[Any]:
    """The rows as pytest params, or one failing placeholder if the corpus is absent."""
    if not rows:
        return [pytest.param(None, id="corpus-missing")]
    return [pytest.param(row, id=row.file) for row in rows]


def need(row: Row | None) -> Row:
    if row is None:
        pytest.fail(
            f"JDL corpus not found at {corpus_dir()}: the checkout is incomplete"
        )
    return row


def corpus_bytes(name: str) -> bytes:
    path = corpus_dir() / name
    if not path.is_file():
        pytest.fail(f"corpus file {path} is missing")
    return path.read_bytes()


def corpus_attrs(name: str) -> dict[str, jdl.Value]:
    return jdl.parse(corpus_bytes(name))


def same(a: Any, b: Any) -> bool:
    """Equality that also tells 1, 1.0 and True apart (plain == does not)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


# ---------------------------------------------------------------------------- corpus


def test_corpus_is_present_and_complete() -> None:
    assert (corpus_dir() / "MANIFEST.tsv").is_file(), (
        f"JDL corpus not found at {corpus_dir()}: the checkout is incomplete"
    )
    listed = {row.file for row in ROWS}
    on_disk = {path.name for path in corpus_dir().glob("*.jdl")}
    assert listed == on_disk
    assert sum(row.valid for row in ROWS) >= 50
    assert sum(not row.valid for row in ROWS) >= 5


@pytest.mark.parametrize("row", params([r for r in ROWS if r.valid]))
def test_valid_file_parses_to_manifest_values(row: Row | None) -> None:
    row = need(row)
    attrs = jdl.parse(corpus_bytes(row.file))
    got = jdl.to_jsonable(attrs)
    assert {key: got.get(key, MISSING) for key in row.expected} == row.expected
    # numbers/booleans must keep their JSON type (1 == 1.0 == True in Python)
    for key, value in row.expected.items():
        assert same(got[key], value), key
    assert jdl.parse(corpus_bytes(row.file).decode("utf-8")) == attrs
    json.dumps(got)


@pytest.mark.parametrize("row", params([r for r in ROWS if r.valid]))
def test_valid_file_survives_dumps_round_trip(row: Row | None) -> None:
    attrs = jdl.parse(corpus_bytes(need(row).file))
    assert same(jdl.parse(jdl.dumps(attrs)), attrs)


def test_manifest_absent_attributes_are_absent() -> None:
    """Notes like '(CPUTime must be ABSENT)' mark commented-out attributes."""
    checked = 0
    for row in ROWS:
        for names in re.findall(r"\(([\w, ]+) must be ABSENT\)", row.notes):
            attrs = corpus_attrs(row.file)
            for name in names.split(","):
                assert jdl.get(attrs, name.strip()) is None, (row.file, name)
                checked += 1
    assert checked >= 4, "expected the corpus notes to name commented-out attributes"


# stage that must reject each invalid file, (line, col) for syntax errors, message part
INVALID = {
    "invalid_dirac_classad_empty_string.jdl": ("parse", (1, 1), "empty job description"),
    "invalid_diracx_malformed.jdl": ("parse", (3, 5), "expected an attribute name"),
    "invalid_diracx_openapi_unterminated_string.jdl": ("parse", (1, 13), "unterminated string"),
    "invalid_diraccommon_missing_semicolon.jdl": ("parse", (1, 25), "missing ';'"),
    "invalid_dirac_empty_brackets.jdl": ("from_attrs", None, "Executable is missing"),
    "invalid_dirac_empty_executable.jdl": ("from_attrs", None, "Executable is missing"),
    "invalid_dirac_param_multi_bad.jdl": ("expand", None, "differ in length"),
}


def first_rejection(data: bytes) -> tuple[str, JDLError]:
    """Run parse -> expand -> from_attrs and report the stage that raised."""
    stage = "parse"
    try:
        attrs = jdl.parse(data)
        stage = "expand"
        jobs = jdl.expand(attrs)
        stage = "from_attrs"
        for job in jobs:
            JobDescription.from_attrs(job)
    except JDLError as exc:
        return stage, exc
    raise AssertionError("accepted")


@pytest.mark.parametrize("row", params([r for r in ROWS if not r.valid]))
def test_invalid_file_is_rejected_where_its_notes_say(row: Row | None) -> None:
    row = need(row)
    assert row.file in INVALID, f"classify the new invalid corpus file {row.file} here"
    want_stage, location, fragment = INVALID[row.file]
    # the notes' reason types are upper-case words (SEMANTIC, JUDGEMENT, SYNTAX)
    if re.search(r"\bSEMANTIC\b|model level|no Executable", row.notes):
        assert want_stage != "parse"
    if re.search(r"\bJUDGEMENT\b|\bSYNTAX\b", row.notes):
        assert want_stage == "parse"
    stage, exc = first_rejection(corpus_bytes(row.file))
    assert stage == want_stage, exc
    assert fragment in exc.message
    assert exc.exit_code == ExitCode.JDL_INVALID
    if location is None:
        assert str(exc) == exc.message
    else:
        assert (exc.line, exc.col) == location
        assert str(exc) == f"{location[0]}:{location[1]}: {exc.message}"


# ----------------------------------------------------- corpus: what the notes demand


def expanded(name: str, **kwargs: Any) -> list[dict[str, jdl.Value]]:
    return jdl.expand(corpus_attrs(name), **kwargs)


def field(jobs: list[dict[str, jdl.Value]], key: str) -> list[Any]:
    return [jdl.to_jsonable(job).get(key, MISSING) for job in jobs]


def test_param_simple_list_gives_a_b_c() -> None:
    jobs = expanded("dirac_param_simple_list.jdl")
    assert field(jobs, "Arguments") == ["a", "b", "c"]
    assert field(jobs, "JobName") == ["Test_0", "Test_1", "Test_2"]
    assert all("Parameters" not in job for job in jobs)


def test_param_bunch_repeats_the_start_value() -> None:
    assert field(expanded("dirac_param_bunch.jdl"), "Arguments") == ["5", "5", "5"]


def test_param_progression_is_times_factor_plus_step() -> None:
    jobs = expanded("dirac_param_progression.jdl")
    assert field(jobs, "Arguments") == ["1", "3", "7"]
    for job in jobs:
        assert not {"Parameters", "ParameterStart", "ParameterStep", "ParameterFactor"} & set(job)


def test_param_multi_combines_named_sequences() -> None:
    jobs = expanded("dirac_param_multi.jdl")
    assert field(jobs, "Arguments") == ["1 a", "3 b", "7 c"]
    assert not [key for job in jobs for key in job if key.startswith("Parameter")]


def test_no_parameters_is_one_unchanged_job() -> None:
    attrs = corpus_attrs("dirac_param_no_parameters.jdl")
    jobs = jdl.expand(attrs)
    assert jobs == [attrs] and jobs[0] is not attrs
    assert field(jobs, "Arguments") == ["%s"] and field(jobs, "JobName") == ["Test_%n"]


def test_diracx_parametric_gives_three_jobs_with_lists() -> None:
    jobs = expanded("diracx_parametric_jdl.jdl")
    assert field(jobs, "JOB_ID") == ["1", "2", "3"]
    assert field(jobs, "InputData") == [
        ["/lhcb/data/data1", "/lhcb/data/data2"],
        ["/lhcb/data/data3", "/lhcb/data/data4"],
        ["/lhcb/data/data5", "/lhcb/data/data6"],
    ]
    assert "-p JOB_ID=2 " in str(jobs[1]["Arguments"])
    assert '-p InputData={"/lhcb/data/data3", "/lhcb/data/data4"}' in str(jobs[1]["Arguments"])


def test_testwf_runnumber_has_three_sequences() -> None:
    jobs = expanded("dirac_testWF_runnumber.jdl")
    assert field(jobs, "RunNumber") == ["123", "456", "789"]
    assert str(jobs[2]["Arguments"]).endswith("-p RunNumber=789")


def test_large_parametric_is_under_our_cap_but_not_diracx_policy() -> None:
    jobs = expanded("diracx_large_parametric.jdl")
    assert len(jobs) == 100 and field(jobs, "Arguments") == ["1"] * 100
    assert field(jobs, "JobName")[:2] == ["Test_00", "Test_01"]
    with pytest.raises(JDLError, match="100 parametric jobs exceed the limit of 20"):
        expanded("diracx_large_parametric.jdl", max_jobs=20)


def test_doc_parametric_start_step_counts_by_two() -> None:
    jobs = expanded("dirac_doc_parametric_start_step.jdl")
    assert field(jobs, "Arguments") == [str(1 + 2 * i) for i in range(20)]
    assert field(jobs, "JobName")[0] == "Parametric_00"
    assert field(jobs, "OutputSandbox")[19] == ["StdOut_19", "StdErr_19"]


def test_doc_parametric_list_substitutes_inside_lists() -> None:
    jobs = expanded("dirac_doc_parametric_list.jdl")
    assert len(jobs) == 5
    assert field(jobs, "OutputSandbox")[1] == ["StdOut_second", "StdErr_second"]
    assert field(jobs, "JobName")[4] == "4_parametric"


def test_glite_parametric_leaves_its_placeholder_alone() -> None:
    jobs = expanded("griddocs_glite_parametric_param.jdl")
    assert len(jobs) == 8 and field(jobs, "Arguments") == ["message_PARAM_.sh"] * 8


def test_parameters_as_a_classad_is_not_a_vector() -> None:
    with pytest.raises(JDLError, match="Parameters must be a positive integer or a list"):
        expanded("dirac_jobdb_test_requirements_2007.jdl")


def test_requirements_expression_is_kept_as_text() -> None:
    attrs = corpus_attrs("dirac_jobdb_test_requirements_2007.jdl")
    assert attrs["Requirements"] == Expression('Other.Site == "DIRAC.in2p3.fr"')
    assert jdl.to_jsonable(attrs)["Requirements"] == 'Other.Site == "DIRAC.in2p3.fr"'


def test_backslash_dollar_is_kept_verbatim() -> None:
    attrs = corpus_attrs("dirac_genericjob_2010_backslash.jdl")
    assert attrs["Executable"] == "\\$DIRACROOT/scripts/dirac-proxy-info"


def test_jobagent_multiprocessor_description() -> None:
    job = jdl.load(corpus_bytes("dirac_jobagent_multiprocessor.jdl"))
    assert job.tags == ("16Processors", "MultiProcessor")
    assert (job.min_processors, job.max_processors) == (16, 16)
    assert job.priority == 1 and job.input_data == ()
    assert job.input_sandbox[-1].startswith("SB:FedericoSandboxSE|/SandBox/")


def test_case_variants_are_found() -> None:
    assert jdl.load(corpus_bytes("griddocs_fractals_jobname_case.jdl")).job_name == "bootstrap"
    picas = jdl.load(corpus_bytes("griddocs_picas_parametric_nospace.jdl"))
    assert picas.std_output == "parametricjob.out"


def test_glexec_arguments_split_like_a_shell() -> None:
    job = jdl.load(corpus_bytes("dirac_glexectest.jdl"))
    assert job.arguments == ("-c", "printenv | grep DIRAC_GLEXEC || echo no glexec")
    assert job.cpu_time == 10  # MaxCPUTime = "10"


def test_pr6300_complete_description() -> None:
    job = jdl.load(corpus_bytes("dirac_pr6300_most_complete.jdl"))
    assert dict(job.execution_environment) == {"MYVAR1": "3", "MYVAR2": "test"}
    assert job.tags == ("3Processors", "MultiProcessor")
    assert (job.min_processors, job.max_processors) == (3, 3)
    assert job.sites == ("LCG.LAPP.fr",) and job.banned_sites == ("LCG.KEK.jp",)
    assert job.grid_ces == ("CE.LAPP.fr",) and job.platforms == ("x86_64-slc6-gcc62-opt",)
    assert (job.output_se, job.output_path) == ("M3PEC-disk", "/myjobs/output")
    assert job.input_sandbox == ("LFN:/vo.formation.idgrilles.fr/user/v/vhamar/test.txt",)
    assert (job.cpu_time, job.priority, job.arguments) == (3600, 10, ("-ltr",))


def test_futureclient_sites_any_and_min_processors() -> None:
    job = jdl.load(corpus_bytes("dirac_futureclient_minprocs.jdl"))
    assert job.sites == ()
    assert (job.min_processors, job.max_processors) == (1000, None)
    assert job.tags == ("MultiProcessor",)


def test_missing_brackets_file_loads() -> None:
    assert jdl.load(corpus_bytes("dirac_testjdl_missing_brackets.jdl")).executable == "executable"


# --------------------------------------------------------------------------- grammar


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('Executable = "x";', {"Executable": "x"}),
        ('[Executable = "x";]', {"Executable": "x"}),
        ('[ Executable = "x" ]', {"Executable": "x"}),
        ('Executable = "x"', {"Executable": "x"}),
        ("A=1;B=2", {"A": 1, "B": 2}),
        ("A = 1;;; B = 2;", {"A": 1, "B": 2}),
        ("\n\n  A = 1;\n\n", {"A": 1}),
        ("A\t=\t1\t;", {"A": 1}),
        ("A = 1;\r\nB = 2;\r\n", {"A": 1, "B": 2}),
        ("\ufeffA = 1;", {"A": 1}),
        ("A = a\u00a0;", {"A": "a"}),
    ],
)
def test_statements(text: str, expected: dict[str, Any]) -> None:
    assert same(jdl.parse(text), expected)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("# whole line\nA = 1;", {"A": 1}),
        ("A = 1; # trailing\nB = 2;", {"A": 1, "B": 2}),
        ("A = 1;   #trailing, with = and ; in it", {"A": 1}),
        ("A = 1 # before the semicolon\n;", {"A": 1}),
        ("// whole line\nA = 1;", {"A": 1}),
        ("A = 1; // trailing\nB = 2;", {"A": 1, "B": 2}),
        ('A = "# not a comment";', {"A": "# not a comment"}),
        ('A = "// not a comment";', {"A": "// not a comment"}),
        ("A = http://host:8085/x;", {"A": "http://host:8085/x"}),
        ("A = {1, # one\n 2 // two\n};", {"A": [1, 2]}),
        ("[\n# A = 1;\nB = 2;\n]", {"B": 2}),
        ("A = x#y", {"A": "x"}),
    ],
)
def test_comments(text: str, expected: dict[str, Any]) -> None:
    assert same(jdl.parse(text), expected)


@pytest.mark.parametrize(
    ("source", "value"),
    [
        ('""', ""),
        ('"a b  "', "a b  "),
        (r'"say \"hi\""', 'say "hi"'),
        (r'"a\\b"', "a\\b"),
        (r'"\\"', "\\"),
        (r'"\$DIRACROOT"', "\\$DIRACROOT"),
        (r'"a\nb"', "a\\nb"),
        ('"tab\there"', "tab\there"),
        ('"=;:|\'&%*{}[]"', "=;:|'&%*{}[]"),
        ('"grüß 雪 😀"', "grüß 雪 😀"),
        ('"10"', "10"),
        ('"true"', "true"),
    ],
)
def test_strings(source: str, value: str) -> None:
    assert same(jdl.parse(f"A = {source};")["A"], value)


@pytest.mark.parametrize(
    ("source", "value"),
    [
        ("std.out", "std.out"),
        ("LFN:/vo/f", "LFN:/vo/f"),
        ("%(JOB_ID)s", "%(JOB_ID)s"),
        ("%s_%n", "%s_%n"),
        ("ANY", "ANY"),
        ("$DIRACROOT/scripts/x", "$DIRACROOT/scripts/x"),
        ("*.log", "*.log"),
        ("../a/b", "../a/b"),
        ("x86_64-slc6-gcc62-opt", "x86_64-slc6-gcc62-opt"),
        ("SB:SE|/SandBox/a.tar.bz2", "SB:SE|/SandBox/a.tar.bz2"),
        ("a&b", "a&b"),
        ("1234abcd", "1234abcd"),
        ("1.2.3", "1.2.3"),
        ("-ltr", "-ltr"),
        ("0x1F", "0x1F"),
        ("1e999", "1e999"),
        ("9" * 1001, "9" * 1001),
        ("12", 12),
        ("-3", -3),
        ("+7", 7),
        ("007", 7),
        ("9" * 1000, int("9" * 1000)),
        ("0.", 0.0),
        ("1.1", 1.1),
        (".5", 0.5),
        ("1e5", 100000.0),
        ("-2.5E-3", -0.0025),
        ("true", True),
        ("True", True),
        ("TRUE", True),
        ("false", False),
        ("FALSE", False),
    ],
)
def test_bare_words_and_literals(source: str, value: Any) -> None:
    assert same(jdl.parse(f"A = {source};")["A"], value)


@pytest.mark.parametrize(
    ("source", "value"),
    [
        ("{}", []),
        ('{"a"}', ["a"]),
        ('{ "a", "b" }', ["a", "b"]),
        ('{\n  "a",\n  "b"\n}', ["a", "b"]),
        ("{a, b,}", ["a", "b"]),
        ("{1, 2.5, true, x}", [1, 2.5, True, "x"]),
        ("{MYVAR1=3, MYVAR2=test}", ["MYVAR1=3", "MYVAR2=test"]),
        ("{{/d/1,\n /d/2},\n {/d/3}}", [["/d/1", "/d/2"], ["/d/3"]]),
        ("{ [ A = 1; ], [ B = {x} ] }", [{"A": 1}, {"B": ["x"]}]),
        ("[ A = 1; b = [ C = 2 ] ]", {"A": 1, "b": {"C": 2}}),
        ("[ ]", {}),
        ("{a == 1, b}", [Expression("a == 1"), "b"]),
    ],
)
def test_lists_and_classads(source: str, value: Any) -> None:
    assert same(jdl.parse(f"A = {source};")["A"], value)


def test_dotted_names_and_case_are_kept() -> None:
    attrs = jdl.parse("Parameters.JOB_ID = {1}; ParameterStart.A = 0; Jobname = x; _x.y2 = 1")
    assert list(attrs) == ["Parameters.JOB_ID", "ParameterStart.A", "Jobname", "_x.y2"]


def test_duplicate_key_last_wins_and_moves_last() -> None:
    attrs = jdl.parse('Type = "a"; JobName = j; Type = "b";')
    assert attrs == {"JobName": "j", "Type": "b"}
    assert list(attrs) == ["JobName", "Type"]


@pytest.mark.parametrize(
    ("source", "text"),
    [
        ('other.Site == "X" && other.NumberOfProcessors >= 2', None),
        ('Other.Site=="X"', None),
        ("x==1", None),
        ('Member("Tag", other.Tags)', None),
        ("!other.Busy", None),
        ("(a || b) && !(c)", None),
        ("-other.EstimatedResponseTime", "-other.EstimatedResponseTime"),
        ("a =?= undefined", None),
        ("a > 1 ? x : y", None),
        ('RegExp("cern.ch", other.CE)\n   && other.Memory >= 2000', None),
        ("f({1, 2}, g())", None),
        ("x < 3 # trailing comment", "x < 3"),
    ],
)
def test_expressions_keep_their_source_text(source: str, text: str | None) -> None:
    # "-other.X" alone is a bare word (a string); only operators make expressions
    expected: Any = Expression(source if text is None else text)
    if source.startswith("-"):
        expected = source
    assert same(jdl.parse(f"Requirements = {source}\n;\nB = 1;")["Requirements"], expected)


# ---------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("text", "line", "col", "fragment"),
    [
        ('A = 1;\nB = "abc', 2, 5, "unterminated string"),
        ('A = "abc\ndef";', 1, 5, "unterminated string"),
        ('A = "abc\\"', 1, 5, "unterminated string"),
        ("A = {1, 2", 1, 5, "'{' is never closed"),
        ("A = {1,\n2\n", 1, 5, "'{' is never closed"),
        ("A = {1, 2;", 1, 10, "expected ',' or '}'"),
        ("A = {1, 2]", 1, 10, "expected ',' or '}'"),
        ("A = {1}};", 1, 8, "unexpected '}'"),
        ("A = x);", 1, 6, "unexpected ')'"),
        ("[A = 1", 1, 1, "'[' is never closed"),
        ("[A = [B = 1]", 1, 1, "'[' is never closed"),
        ("A = 1]", 1, 6, "unexpected ']'"),
        ("[A = 1] x", 1, 9, "after the closing ']'"),
        ('A "x"', 1, 3, "expected '=' after attribute name 'A'"),
        ('Executable\n"x";', 2, 1, "expected '='"),
        ("A == 1", 1, 3, "expected '='"),
        ('= "x"', 1, 1, "unexpected '=' without an attribute name"),
        ("[ = 1]", 1, 3, "unexpected '=' without an attribute name"),
        ("A = ;", 1, 5, "missing value"),
        ("A =", 1, 4, "missing value"),
        ("A = 1;\nB = \n", 3, 1, "missing value"),
        ("A = {1,,2}", 1, 8, "empty list element"),
        ("A = { , }", 1, 7, "empty list element"),
        ('[Executable = "t" Arguments = "x"]', 1, 19, "missing ';' after the value of 'Exec"),
        ("A = 1\nB = 2", 2, 1, "missing ';'"),
        ("A = -o file", 1, 8, "missing ';'"),
        ("A = 'x';", 1, 5, "unexpected"),
        ("'A' = 1;", 1, 1, "expected an attribute name"),
        ("Foo-Bar = 1", 1, 4, "expected '='"),
        ("A = x ==;", 1, 9, "expected an operand"),
        ("A = f(1,", 1, 9, "expected an operand"),
        ("A = f(1", 1, 6, "'(' is never closed"),
        ("A = (x", 1, 5, "'(' is never closed"),
        ("A = (x y)", 1, 8, "expected ')'"),
        ("A = x == [B = 1]", 1, 10, "expected an operand"),
        ("A=0//(", 1, 6, "unexpected '('"),  # found by the fuzzer: '//' began a comment
        ('A = "a" // c\n (x)', 2, 2, "unexpected '('"),
        ("A = \x00;", 1, 5, "U+0000"),
        ('A = "a\x00b";', 1, 7, "U+0000 inside a string"),
        ('A = "a\x1bb";', 1, 7, "U+001B inside a string"),
        ("A = 1;\nB = x\x00;", 2, 6, "U+0000"),
        ('A = "\ud800";', 1, 6, "surrogate"),
        ("", 1, 1, "empty job description"),
        ("  # only a comment\n", 1, 1, "empty job description"),
    ],
)
def test_syntax_errors_are_located(text: str, line: int, col: int, fragment: str) -> None:
    with pytest.raises(JDLError) as info:
        jdl.parse(text)
    err = info.value
    assert fragment in err.message
    assert (err.line, err.col) == (line, col), str(err)
    assert str(err) == f"{line}:{col}: {err.message}"


@pytest.mark.parametrize(
    ("data", "line", "col"),
    [
        (b'A = "\xff";', 1, 6),
        (b'A = 1;\nB = "ok\xc3\xa9\xff";', 2, 9),
        (b"\xc3", 1, 1),
        (b"A = \xed\xa0\x80;", 1, 5),  # an encoded surrogate is not UTF-8
    ],
)
def test_invalid_utf8_is_located(data: bytes, line: int, col: int) -> None:
    with pytest.raises(JDLError, match="invalid UTF-8") as info:
        jdl.parse(data)
    assert (info.value.line, info.value.col) == (line, col)


def test_bytes_and_bytearray_are_accepted() -> None:
    assert jdl.parse(bytearray(b"A = 1")) == jdl.parse("A = 1") == {"A": 1}


def test_non_text_input_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        jdl.parse(42)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("opener", "closer"),
    [("{", "}"), ("[ A = ", " ]"), ("(", ")"), ("f(", ")")],
)
def test_nesting_depth_is_capped(opener: str, closer: str) -> None:
    def nested(depth: int) -> str:
        core = "x == 1" if opener in ("(", "f(") else "1"
        return "A = " + opener * depth + core + closer * depth

    jdl.parse(nested(jdl.MAX_DEPTH))
    with pytest.raises(JDLError, match="nesting deeper than 64 levels") as info:
        jdl.parse(nested(jdl.MAX_DEPTH + 1))
    assert info.value.line == 1 and info.value.col is not None
    with pytest.raises(JDLError, match="nesting"):
        jdl.parse(nested(100_000))


def test_long_unary_chains_do_not_recurse() -> None:
    assert jdl.parse("A = " + "!" * 100_000 + "x")["A"] == Expression("!" * 100_000 + "x")


def test_large_input_parses_and_oversized_input_is_refused() -> None:
    lfns = ",".join(f'"LFN:/vo/data/f{i:07d}.root"' for i in range(20_000))
    attrs = jdl.parse(f"Executable = x; InputData = {{{lfns}}};")
    assert len(attrs["InputData"]) == 20_000  # type: ignore[arg-type]
    with pytest.raises(JDLError, match="too large"):
        jdl.parse("A = " + "x" * (jdl.MAX_TEXT_CHARS + 1))
    with pytest.raises(JDLError, match="too large"):
        jdl.parse(b"A = " + b"x" * (4 * jdl.MAX_TEXT_CHARS + 1))


def test_jdl_error_shape() -> None:
    err = JDLError("bad thing", 3, 7)
    assert isinstance(err, PilotError) and err.exit_code == ExitCode.JDL_INVALID
    assert (err.message, err.line, err.col, str(err)) == ("bad thing", 3, 7, "3:7: bad thing")
    assert str(JDLError("no place")) == "no place"
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.message, copy.line, copy.col) == (err.message, err.line, err.col)


# ----------------------------------------------------------- to_jsonable, dumps, get


def test_to_jsonable_turns_expressions_into_text() -> None:
    attrs = jdl.parse("R = a == 1; L = {b > 2, [C = c < 3]}; N = 1.5; T = true")
    assert jdl.to_jsonable(attrs) == {
        "R": "a == 1",
        "L": ["b > 2", {"C": "c < 3"}],
        "N": 1.5,
        "T": True,
    }


def test_dumps_writes_parseable_jdl() -> None:
    attrs: dict[str, jdl.Value] = {
        "Executable": "/bin/echo",
        "Quoted": 'say "hi" \\ \\$X #not // comment',
        "Numberish": "10",
        "Boolish": "true",
        "N": -3,
        "F": 1e-300,
        "Z": -0.0,
        "B": False,
        "Big": -(10**999),
        "Req": Expression('other.Site == "X" && n >= 2'),
        "Nested": [[1, "a"], {"K": Expression("!x"), "Deep": [{}]}],
        "Empty": [],
        "Parameters.A": ["%(A)s"],
    }
    text = jdl.dumps(attrs)
    assert text.startswith("[\n") and text.endswith("]\n")
    assert same(jdl.parse(text), attrs)


@pytest.mark.parametrize(
    ("attrs", "fragment"),
    [
        ({"A": "two\nlines"}, "line break"),
        ({"A": "nul\x00"}, "control character"),
        ({"A": float("nan")}, "cannot be written"),
        ({"A": float("inf")}, "cannot be written"),
        ({"A": 10**1000}, "more than 1000 digits"),
        ({"bad key": 1}, "invalid attribute name"),
        ({"A": Expression("just_a_word")}, "not a JDL expression"),
        ({"A": Expression(" x == 1")}, "not a JDL expression"),
        ({"A": Expression("x == ")}, "not a JDL expression"),
        ({"A": {"b c": 1}}, "invalid attribute name"),
    ],
)
def test_dumps_refuses_what_it_cannot_write(attrs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(JDLError, match=fragment):
        jdl.dumps(attrs)


def test_dumps_refuses_values_nested_too_deep() -> None:
    value: Any = 1
    for _ in range(jdl.MAX_DEPTH):
        value = [value]
    jdl.parse(jdl.dumps({"A": value}))
    with pytest.raises(JDLError, match="nested deeper"):
        jdl.dumps({"A": [value]})


def test_dumps_type_errors() -> None:
    with pytest.raises(TypeError):
        jdl.dumps({"A": None})  # type: ignore[dict-item]
    with pytest.raises(TypeError):
        jdl.dumps({1: 1})  # type: ignore[dict-item]


def test_get_is_case_insensitive_and_last_written_wins() -> None:
    attrs = jdl.parse("JobName = a; Stdoutput = out; Jobname = b;")
    assert jdl.get(attrs, "StdOutput") == "out"
    assert jdl.get(attrs, "JOBNAME") == "b" == jdl.get(attrs, "JobName")
    assert jdl.get(attrs, "Missing") is None
    assert jdl.get(attrs, "Missing", "dflt") == "dflt"


# --------------------------------------------------------------------------- expand


def expand_text(text: str, **kwargs: Any) -> list[dict[str, Any]]:
    return [jdl.to_jsonable(job) for job in jdl.expand(jdl.parse(text), **kwargs)]


def test_int_sequences_stay_int_and_float_ones_are_float() -> None:
    ints = expand_text("Parameters = 3; ParameterStart = 2; ParameterStep = 3; A = %s")
    assert [job["A"] for job in ints] == ["2", "5", "8"]
    floats = expand_text("Parameters = 3; ParameterStart = 1; ParameterFactor = 1.5; A = %s")
    assert [job["A"] for job in floats] == ["1.0", "1.5", "2.25"]
    start = expand_text("Parameters = 2; ParameterStart = 0.; ParameterStep = 1; A = %s")
    assert [job["A"] for job in start] == ["0.0", "1.0"]
    quoted = expand_text('Parameters = "2"; ParameterStart = "4"; A = %s')
    assert [job["A"] for job in quoted] == ["4", "4"]


def test_index_is_zero_padded_like_dirac() -> None:
    jobs = expand_text("Parameters = 11; A = job_%n")
    assert jobs[0]["A"] == "job_00" and jobs[10]["A"] == "job_10"
    assert [j["A"] for j in expand_text("Parameters = {x}; A = %n")] == ["0"]


def test_placeholders_everywhere_and_whole_list_values() -> None:
    jobs = expand_text(
        "Parameters = {{f1, f2}, {f3}}; Parameters.B = {x, y};"
        'InputData = %s; Out = {"a", %s, "%n-%(B)s"}; N = [X = "%(B)s"; Y = {%s}];'
        'Unknown = %(C)s; Req = other.Site == "%s"; Number = 5'
    )
    assert jobs[0] == {
        "InputData": ["f1", "f2"],
        "Out": ["a", "f1", "f2", "0-x"],
        "N": {"X": "x", "Y": ["f1", "f2"]},
        "Unknown": "%(C)s",
        "Req": 'other.Site == "%s"',
        "Number": 5,
    }
    assert jobs[1]["InputData"] == ["f3"] and jobs[1]["Out"] == ["a", "f3", "1-y"]


def test_parameters_attributes_are_removed_whatever_their_case() -> None:
    jobs = expand_text("parameters = 2; PARAMETERSTART = 1; parameterstep.a = 2; A = %s")
    assert jobs == [{"A": "1"}, {"A": "1"}]


def test_named_list_alone_is_parametric() -> None:
    assert expand_text("Parameters.B = {u, v}; A = %(B)s; S = %s") == [
        {"A": "u", "S": "%s"},
        {"A": "v", "S": "%s"},
    ]


def test_start_without_parameters_is_not_parametric() -> None:
    assert expand_text("ParameterStart = 3; A = %s") == [{"ParameterStart": 3, "A": "%s"}]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("Parameters = 3; Parameters.B = {a, b, c, d}", "differ in length"),
        ("Parameters = {a}; Parameters.B = {a, b}", "differ in length"),
        ("Parameters = 0", "must be positive"),
        ("Parameters = -2", "must be positive"),
        ("Parameters = {}", "must be positive"),
        ("Parameters = 1001", "exceed the limit of 1000"),
        ("Parameters = 99999999999999999999999", "exceed the limit"),
        ("Parameters = abc", "positive integer or a list"),
        ("Parameters = 2.5", "positive integer or a list"),
        ("Parameters = true", "positive integer or a list"),
        ("Parameters.B = 3", "must be a list"),
        ("Parameters = 2; ParameterStart = abc", "ParameterStart must be a number"),
        ("Parameters = 2; ParameterStep.Q = {1}", "ParameterStep.Q must be a number"),
        ("Parameters = 2; ParameterFactor = true", "must be a number"),
        ("Parameters = 1000; ParameterFactor = 1000", "grows too large"),
        ("Parameters = 3; ParameterStart = 1e300; ParameterFactor = 1e300", "grows too large"),
    ],
)
def test_expand_errors(text: str, fragment: str) -> None:
    with pytest.raises(JDLError, match=re.escape(fragment)):
        jdl.expand(jdl.parse(text))


def test_job_cap_is_configurable() -> None:
    assert len(jdl.expand(jdl.parse("Parameters = 5"), max_jobs=5)) == 5
    with pytest.raises(JDLError, match="6 parametric jobs exceed the limit of 5"):
        jdl.expand(jdl.parse("Parameters = 6"), max_jobs=5)


def test_expanded_jobs_are_independent_and_round_trip() -> None:
    jobs = jdl.expand(jdl.parse("Parameters = {{a}, {b}}; L = %s; Executable = x"))
    jobs[0]["L"].append("mutated")  # type: ignore[union-attr]
    assert jobs[1]["L"] == ["b"]
    for job in jobs:
        assert same(jdl.parse(jdl.dumps(job)), job)


# ------------------------------------------------------------------- JobDescription


def test_minimal_description_defaults() -> None:
    job = jdl.load('Executable = "/bin/true"')
    assert job.executable == "/bin/true" and job.arguments == ()
    assert (job.cpu_time, job.priority) == (86400, 1)
    assert (job.min_processors, job.max_processors, job.whole_node) == (1, None, False)
    assert (job.number_of_gpus, job.max_ram_mb, job.tags) == (0, None, ())
    assert job.std_output is None and job.std_error is None and job.vo is None
    assert job.input_sandbox == job.output_sandbox == job.input_data == job.output_data == ()
    assert job.sites == job.banned_sites == job.platforms == job.grid_ces == ()
    assert job.output_se is None and job.output_path is None and job.job_name is None
    assert dict(job.execution_environment) == {} and dict(job.attrs) == {"Executable": "/bin/true"}
    with pytest.raises(TypeError):
        job.attrs["X"] = 1  # type: ignore[index]


@pytest.mark.parametrize(
    "text",
    ["", "Executable = ''", 'Executable = ""', 'Executable = "  "', "Executable = {a}"],
)
def test_executable_is_required(text: str) -> None:
    attrs = {} if not text or "''" in text else jdl.parse(text)
    with pytest.raises(JDLError, match="Executable"):
        JobDescription.from_attrs(attrs)


def test_scalars_lists_and_strings() -> None:
    job = jdl.load(
        'Executable = x; InputSandbox = "one.sh"; OutputSandbox = {a, "", b, a};'
        'InputData = {"LFN:/f1", "LFN:/f2"}; OutputData = "";'
        'Site = "LCG.A.fr, ANY, LCG.B.fr"; Sites = {LCG.C.fr}; BannedSite = {LCG.D.fr};'
        "Platform = el9; GridCEs = {ce1, ce2}; OutputSE = {SE-1, SE-2};"
        "JobName = 42; JobType = User; VirtualOrganization = dteam; MaxRAM = 2048;"
        'Arguments = "-c \'echo a  b\' \\"q\\" plain"'
    )
    assert job.input_sandbox == ("one.sh",) and job.output_sandbox == ("a", "b")
    assert job.input_data == ("LFN:/f1", "LFN:/f2") and job.output_data == ()
    assert job.sites == ("LCG.A.fr", "LCG.B.fr", "LCG.C.fr") and job.banned_sites == ("LCG.D.fr",)
    assert job.platforms == ("el9",) and job.grid_ces == ("ce1", "ce2")
    assert job.output_se == "SE-1,SE-2"
    assert (job.job_name, job.job_type, job.vo, job.max_ram_mb) == ("42", "User", "dteam", 2048)
    assert job.arguments == ("-c", "echo a  b", "q", "plain")


def test_max_ram_zero_is_no_memory_request() -> None:
    """MaxRAM = 0 asks for nothing (the job gets its share of the slot), not for 0 MB,
    which killed the payload at its first sample."""
    assert jdl.load("Executable = x; MaxRAM = 0").max_ram_mb is None


def test_cpu_time_and_priority_accept_quoted_numbers() -> None:
    assert jdl.load('Executable = x; CPUTime = "600"; Priority = "3"').cpu_time == 600
    assert jdl.load('Executable = x; MaxCPUTime = "10"').cpu_time == 10
    assert jdl.load("Executable = x; CPUTime = 5; MaxCPUTime = 9").cpu_time == 5
    assert jdl.load("Executable = x; CPUTime = 3600.0").cpu_time == 3600
    assert jdl.load("Executable = x; Priority = -2").priority == -2


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("CPUTime = abc", "CPUTime must be an integer"),
        ("CPUTime = -1", "CPUTime must be at least 0"),
        ("CPUTime = 1.5", "CPUTime must be an integer"),
        ("Priority = true", "Priority must be an integer"),
        ("NumberOfProcessors = four", "NumberOfProcessors must be an integer"),
        ("NumberOfProcessors = 0", "at least 1"),
        ("NumberOfProcessors = {2}", "must be an integer, got a list"),
        ("MinNumberOfProcessors = 4; MaxNumberOfProcessors = 2", "below MinNumberOfProcessors"),
        ("NumberOfGPUs = -1", "at least 0"),
        ("MaxRAM = 2GB", "MaxRAM must be an integer"),
        ("WholeNode = maybe", "WholeNode must be true or false"),
        ("StdOutput = {a}", "StdOutput must be a string, got a list"),
        ("InputSandbox = {{a}}", "InputSandbox must be a string"),
        ("OutputSandbox = {[A = 1]}", "must be a string, got a ClassAd"),
        ("JobName = true", "must be a string, got a boolean"),
        ("Arguments = {a}", "Arguments must be a string"),
        ('Arguments = "\'unbalanced"', "cannot split"),
        ('ExecutionEnvironment = "NOEQUALS"', "is not NAME=VALUE"),
        ('ExecutionEnvironment = {"=x"}', "is not NAME=VALUE"),
        ("Site = a == b", "Site must be a string, got the expression"),
    ],
)
def test_semantic_errors(text: str, fragment: str) -> None:
    attrs = jdl.parse(f"Executable = x; {text}")
    with pytest.raises(JDLError, match=re.escape(fragment)) as info:
        JobDescription.from_attrs(attrs)
    assert info.value.line is None and str(info.value) == info.value.message


@pytest.mark.parametrize(
    ("text", "tags", "cores"),
    [
        ("NumberOfProcessors = 1", (), (1, 1)),
        ("NumberOfProcessors = 8", ("8Processors", "MultiProcessor"), (8, 8)),
        ('NumberOfProcessors = "4"', ("4Processors", "MultiProcessor"), (4, 4)),
        ("MinNumberOfProcessors = 2", ("MultiProcessor",), (2, None)),
        ("MinNumberOfProcessors = 2; MaxNumberOfProcessors = 6", ("MultiProcessor",), (2, 6)),
        ("MaxNumberOfProcessors = 6", (), (1, 6)),
        ("WholeNode = True", ("MultiProcessor", "WholeNode"), (1, None)),
        ('WholeNode = "yes"', ("MultiProcessor", "WholeNode"), (1, None)),
        ("WholeNode = false", (), (1, None)),
        ("NumberOfGPUs = 2", ("GPU",), (1, None)),
        ('Tags = {"gpu"}', ("GPU",), (1, None)),
        ("Tags = {multiprocessor, wholenode}", ("MultiProcessor", "WholeNode"), (1, None)),
        ('Tags = "long, GPU"; Tag = long', ("GPU", "long"), (1, None)),
        (
            "NumberOfProcessors = 2; Tags = {MultiProcessor, cvmfs}; WholeNode = 1",
            ("2Processors", "MultiProcessor", "WholeNode", "cvmfs"),
            (2, 2),
        ),
    ],
)
def test_tags_are_derived_like_dirac(text: str, tags: tuple[str, ...], cores: Any) -> None:
    job = jdl.load(f"Executable = x; {text}")
    assert job.tags == tags
    assert (job.min_processors, job.max_processors) == cores


def test_gpu_count_and_whole_node_fields() -> None:
    job = jdl.load("Executable = x; NumberOfGPUs = 2; WholeNode = TRUE")
    assert (job.number_of_gpus, job.whole_node) == (2, True)


def test_execution_environment_forms() -> None:
    single = jdl.load('Executable = x; ExecutionEnvironment = "MYVARIABLE=TEST"')
    assert dict(single.execution_environment) == {"MYVARIABLE": "TEST"}
    many = jdl.load('Executable = x; ExecutionEnvironment = {A=1, "B=x=y", "C="}')
    assert dict(many.execution_environment) == {"A": "1", "B": "x=y", "C": ""}


def test_load_does_not_expand() -> None:
    job = jdl.load('Executable = x; Arguments = "%s"; Parameters = 3')
    assert job.arguments == ("%s",) and job.attrs["Parameters"] == 3


@settings(max_examples=500)
@given(st.text(alphabet=" \t\r\n\x0b\x0c\u3000\x85\xa0ab-=#;\"'\\é", max_size=12))
def test_arguments_split_like_shlex(text: str) -> None:
    """Arguments without quotes or escapes take a faster path than shlex: same words."""
    try:
        expected: tuple[str, ...] | None = tuple(shlex.split(text))
    except ValueError:
        expected = None
    try:
        got: tuple[str, ...] | None = jdl.JobDescription.from_attrs(
            {"Executable": "x", "Arguments": text}
        ).arguments
    except jdl.JDLError:
        got = None
    assert got == expected
