"""The input people actually type: every case is refused with its documented exit code and
one line on stderr that names what to fix, never a traceback.

Both programs run as real processes (the installed console scripts), so what is checked
is exactly what a user sees. Settings cases are also given to ``pilot config --check``,
which must refuse each of them the same way without running anything.
"""

from __future__ import annotations

import http.server
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pilot import config
from pilot.errors import ExitCode
from tests.conftest import BIN, Stub, pilot_env, start_stub

USAGE, JDL, SANDBOX = int(ExitCode.USAGE), int(ExitCode.JDL_INVALID), int(ExitCode.SANDBOX)


@dataclass(frozen=True)
class Case:
    name: str
    prog: str  # pilot | pilot-stub
    argv: tuple[str, ...]
    code: int
    says: str  # a fragment of the one error line: what to fix, as the user wrote it
    env: dict[str, str] = field(default_factory=dict)
    toml: str | None = None  # written to {toml}
    setting: bool = False  # a configuration mistake: `pilot config --check` refuses it too


def run(name: str, *argv: str, code: int = USAGE, says: str, **env: str) -> Case:
    return Case(name, "pilot", ("run", *argv), code, says, env, setting=True)


def toml(name: str, text: str, says: str) -> Case:
    return Case(name, "pilot", ("run", "--config", "{toml}"), USAGE, says, {}, text, True)


def stub(name: str, *argv: str, code: int = USAGE, says: str, **env: str) -> Case:
    return Case(name, "pilot-stub", argv, code, says, env)


def pilot(name: str, *argv: str, code: int = USAGE, says: str, **env: str) -> Case:
    return Case(name, "pilot", argv, code, says, env)


CASES = [
    # -- pilot: flags ----------------------------------------------------------------------
    run("cores-negative", "--cores", "-4", says="--cores -4: too small"),
    run("cores-fraction", "--cores", "1.5", says="--cores 1.5: not a whole number"),
    run("cores-word", "--cores", "four", says="--cores four"),
    run("idle-nan", "--idle-timeout", "nan", says="--idle-timeout nan: not a finite number"),
    run("idle-inf", "--idle-timeout", "inf", says="--idle-timeout inf"),
    run("idle-negative", "--idle-timeout", "-1", says="--idle-timeout -1"),
    run("sample-zero", "--sample-interval", "0", says="--sample-interval 0"),
    run("heartbeat-zero", "--heartbeat-interval", "0", says="--heartbeat-interval 0"),
    run("max-jobs-zero", "--max-jobs", "0", says="--max-jobs 0"),
    run("max-concurrent-negative", "--max-concurrent", "-1", says="--max-concurrent -1"),
    run("memory-zero", "--memory-mb", "0", says="--memory-mb 0"),
    run("cpu-margin-large", "--cpu-margin", "2", says="--cpu-margin 2: too large"),
    run("stalled-fraction", "--stalled-cpu-fraction", "1.5", says="--stalled-cpu-fraction"),
    run("check-timeout-zero", "--check-timeout", "0", says="--check-timeout 0"),
    run("grace-negative", "--grace", "-5", says="--grace -5"),
    run("payload-proxy", "--payload-proxy", "sometimes", says="one of full, limited, off"),
    run("payload-proxy-hours", "--payload-proxy-max-hours", "1e6", says="too large"),
    run("max-output-zero", "--max-output-mb", "0", says="--max-output-mb 0"),
    # past threading.TIMEOUT_MAX a wait raises OverflowError in the thread that waits
    run("heartbeat-huge", "--heartbeat-interval", "1e10", says="--heartbeat-interval 1e10: too"),
    run("grace-huge", "--grace", "1e300", says="--grace 1e300: too large"),
    run("check-timeout-huge", "--check-timeout", "1e300", says="--check-timeout 1e300: too"),
    run("cores-huge", "--cores", "99999999999999999999999", says="too large"),
    run("memory-huge", "--memory-mb", "99999999999999999999999", says="--memory-mb"),
    run("isolation-unknown", "--isolation", "chroot", says="one of auto, bwrap"),
    run("isolation-typo", "--isolation", "bwarp", says="did you mean 'bwrap'"),
    run("log-format", "--log-format", "xml", says="--log-format xml"),
    run("log-level", "--log-level", "LOUD", says="--log-level LOUD"),
    run("backend", "--backend", "grpc", says="--backend grpc"),
    run("server-no-scheme", "--server", "localhost:8080", says="not a server URL"),
    run("server-ftp", "--server", "ftp://example.org", says="--server ftp://example.org"),
    run("server-port", "--server", "http://127.0.0.1:99999", says="port"),
    run("server-port-zero", "--server", "http://127.0.0.1:0", says="port is not a number in 1"),
    run("server-ipv6-open", "--server", "http://[::1", says="not a server URL"),
    run("site-empty", "--site", "", says="--site"),
    run("tags-blank", "--tags", "a b", says="'a b' is not a name"),
    run("disable-unknown", "--disable-check", "nosuch", says="--disable-check nosuch"),
    run("disable-typo", "--disable-check", "dsk", says="did you mean 'disk'"),
    run("require-unknown", "--require-check", "nosuch", says="--require-check nosuch"),
    run("checks-dir-missing", "--checks-dir", "/nonexistent", says="no such directory"),
    run("checks-dir-file", "--checks-dir", "{file}", says="not a directory"),
    run("plugin-path-missing", "--plugin-path", "/nonexistent", says="--plugin-path"),
    run("apptainer-no-image", "--isolation", "apptainer", says="--apptainer-image"),
    run("proxy-missing", "--proxy", "/nonexistent/proxy", says="--proxy /nonexistent/proxy"),
    run("proxy-dir", "--proxy", "{tmp}", says=": not a file"),
    run("work-dir-file", "--work-dir", "{file}", says="--work-dir"),
    pilot("unknown-flag", "run", "--no-such-flag", says="unrecognized arguments"),
    pilot("flag-without-value", "run", "--cores", says="--cores"),
    pilot("server-empty", "run", "--server", "", says="no server"),
    # -- pilot: environment ----------------------------------------------------------------
    run("env-site-empty", says="PILOT_SITE=", PILOT_SITE=""),
    run("env-cores", says="PILOT_CORES=-4", PILOT_CORES="-4"),
    run("env-idle-nan", says="PILOT_IDLE_TIMEOUT=nan", PILOT_IDLE_TIMEOUT="nan"),
    run("env-max-jobs-bool", says="PILOT_MAX_JOBS=true", PILOT_MAX_JOBS="true"),
    run("env-log-level", says="PILOT_LOG_LEVEL=verbose", PILOT_LOG_LEVEL="verbose"),
    run("env-server", says="PILOT_SERVER=localhost:1", PILOT_SERVER="localhost:1"),
    run("env-config-missing", says="/nonexistent.toml", PILOT_CONFIG="/nonexistent.toml"),
    run("env-config-empty", says="PILOT_CONFIG=", PILOT_CONFIG=""),
    run("env-disable", says="PILOT_DISABLE_CHECK nosuch", PILOT_DISABLE_CHECK="nosuch"),
    run("env-sample", says="PILOT_SAMPLE_INTERVAL=0", PILOT_SAMPLE_INTERVAL="0"),
    run("env-failure-sleep-huge", says="PILOT_FAILURE_SLEEP=1e10", PILOT_FAILURE_SLEEP="1e10"),
    run("env-idle-huge", says="PILOT_IDLE_TIMEOUT=1e300", PILOT_IDLE_TIMEOUT="1e300"),
    # -- pilot: TOML -----------------------------------------------------------------------
    toml("toml-bool-int", "max_jobs = true\n", "max_jobs = true: not a whole number"),
    toml("toml-quoted-number", 'idle_timeout = "30"\n', 'idle_timeout = "30"'),
    toml("toml-float-int", "cores = 1.5\n", "cores = 1.5"),
    toml("toml-checks-scalar", "[checks]\ndisk = 5\n", "[checks.disk]"),
    toml("toml-checks-typo", "[checks.dsk]\nmin_free_mb = 1\n", "did you mean 'disk'"),
    toml("toml-dirac-typo", '[dirac]\nmatchr = "dips://h:1/a/b"\n', "did you mean 'matcher'"),
    toml("toml-dirac-scheme", '[dirac]\nmatcher = "http://h/x"\n', "dips://"),
    toml("toml-dirac-ipv6-open", '[dirac]\nmatcher = "dips://[::1"\n', "dips://HOST:PORT"),
    toml("toml-unknown", 'sitte = "X"\n', "did you mean 'site'"),
    toml("toml-syntax", "site = \n", "not valid TOML"),
    toml("toml-list-items", "tags = [1, 2]\n", "tags = [1, 2]"),
    toml("toml-option-typo", "[checks.disk]\nmin_fre_mb = 1\n", "did you mean 'min_free_mb'"),
    toml("toml-option-type", '[checks.disk]\nmin_free_mb = "lots"\n', 'min_free_mb = "lots"'),
    toml("toml-option-list", '[checks.cvmfs]\nrepositories = "a.org"\n', "a list of texts"),
    toml("toml-check-timeout", "[checks.disk]\ntimeout = -1\n", "timeout = -1"),
    toml("toml-check-timeout-huge", "[checks.disk]\ntimeout = 1e300\n", "timeout = 1e+300: too"),
    toml("toml-dirac-timeout-huge", "[dirac]\ntimeout = 1e10\n", "[dirac] timeout = 1"),
    toml("toml-stalled-huge", "stalled_window = 1e300\n", "stalled_window = 1e+300: too large"),
    # TOML integers beyond any float (OverflowError) or beyond int() of a text (ValueError)
    toml("toml-int-beyond-float", f"idle_timeout = {'9' * 400}\n", "9: too large; expected"),
    toml("toml-int-very-negative", f"grace = -{'9' * 400}\n", "9: too small; expected"),
    toml("toml-table-beyond-float", f"[checks.disk]\ntimeout = {'9' * 400}\n", "9: too large"),
    toml("toml-int-beyond-text", f"cores = {'9' * 5000}\n", "not valid TOML: Exceeds"),
    toml("toml-choice", 'log_format = "xml"\n', 'log_format = "xml"'),
    toml("toml-type", "isolation = 3\n", "isolation = 3"),
    toml("toml-site-empty", 'site = ""\n', 'site = ""'),
    toml("toml-binary", "\udcff\udcfe\n", "not a text file"),
    # -- pilot: other subcommands ----------------------------------------------------------
    pilot("jdl-missing", "jdl", "/nonexistent.jdl", says="/nonexistent.jdl"),
    pilot("jdl-bad", "jdl", "{bad_jdl}", code=JDL, says="bad.jdl:2:"),
    pilot(
        "local-bad",
        "local",
        "{bad_jdl}",
        "--output-dir",
        "{tmp}/o",
        code=JDL,
        says="bad.jdl:2:13: unterm",
    ),
    pilot("local-missing", "local", "/nonexistent.jdl", "--output-dir", "{tmp}/o", says="nonex"),
    pilot("local-no-output-dir", "local", "{bad_jdl}", says="--output-dir"),
    pilot("no-such-command", "frobnicate", says="invalid choice"),
    pilot("config-what", "config", says="--show"),
    pilot("check-cores", "check", "--cores", "0", says="--cores 0"),
    pilot("check-option-of-run", "check", "--max-jobs", "3", says="--max-jobs"),
    # these two meet the server after the node checks: the pilot's progress lines are
    # not errors, so only the error level is kept to see that the error is said once
    pilot("https-to-http", "run", "--log-level", "ERROR", "--server", "{stub_https}", says="TLS"),
    pilot("not-a-matcher", "run", "--log-level", "ERROR", "--server", "{html}", says="matcher"),
    # -- pilot-stub: serve ------------------------------------------------------------------
    stub("serve-port-high", "serve", "--port", "99999", says="--port: 99999 is out of range"),
    stub("serve-port-negative", "serve", "--port", "-1", says="--port"),
    stub("serve-port-word", "serve", "--port", "http", says="--port"),
    stub("serve-db-dir", "serve", "--db", "{tmp}", says="is a directory"),
    stub("serve-db-not-sqlite", "serve", "--db", "{file}", says="not a SQLite database"),
    stub("serve-off-loopback", "serve", "--host", "192.0.2.1", says="--insecure"),
    stub("serve-sandbox-limit", "serve", "--max-sandbox-mb", "0", says="--max-sandbox-mb"),
    stub("serve-stalled-nan", "serve", "--stalled-after", "nan", says="--stalled-after"),
    stub("serve-reap-huge", "serve", "--reap-interval", "1e300", says="out of range: 0.1..3600"),
    stub("serve-workers-huge", "serve", "--workers", "100000", says="out of range: 1..1024"),
    stub("serve-conns-huge", "serve", "--max-connections", "1e9", says="--max-connections"),
    stub("serve-client-cert", "serve", "--require-client-cert", says="needs --cert"),
    stub("serve-key-alone", "serve", "--key", "{file}", says="--key needs --cert"),
    stub("serve-url-file", "serve", "--url-file", "/nonexistent/url", says="--url-file"),
    stub("serve-url-file-dir", "serve", "--url-file", "{tmp}", says="--url-file"),
    stub("serve-sandbox-dir", "serve", "--sandbox-dir", "{file}/x", says="plain.txt/x"),
    stub("serve-token-file", "serve", "--pilot-token-file", "/nonexistent", says="/nonexistent"),
    # -- pilot-stub: where the server is ------------------------------------------------------
    stub("no-server", "status", "1", says="no server"),
    stub("server-no-scheme", "--server", "localhost:1", "status", "1", says="not a server URL"),
    stub("server-ipv6-open", "--server", "http://[::1", "jobs", says="not a server URL"),
    stub("server-port-zero", "--server", "http://127.0.0.1:0", "jobs", says="port is not a"),
    stub("server-after-command", "status", "1", "--server", "ftp://x", says="--server 'ftp://x'"),
    stub("env-server", "jobs", says="PILOT_SERVER 'localhost:1'", PILOT_SERVER="localhost:1"),
    stub("url-file-missing", "--url-file", "/nonexistent", "jobs", says="--url-file /nonexistent"),
    stub("url-file-env", "jobs", says="PILOT_SERVER_FILE", PILOT_SERVER_FILE="/nonexistent"),
    stub("url-file-garbage", "jobs", "--url-file", "{file}", says="not a server URL"),
    stub("https-to-http", "--server", "{stub_https}", "jobs", says="does not speak TLS"),
    stub("not-a-matcher", "--server", "{html}", "jobs", says="not from a pilot-agent matcher"),
    # a wrong URL is said once, not once for each job id
    stub("kill-not-a-matcher", "--server", "{html}", "kill", "1", "2", says="check the server"),
    stub("status-https-to-http", "--server", "{stub_https}", "status", "1", "2", says="TLS"),
    # -- pilot-stub: jobs and files -----------------------------------------------------------
    stub("status-word", "--server", "{stub}", "status", "abc", says="'abc' is not a job id"),
    stub("status-zero", "--server", "{stub}", "status", "0", says="'0' is not a job id"),
    # beyond SQLite's integers the stub answered 500 "internal server error"
    stub("status-id-huge", "--server", "{stub}", "status", "9" * 23, says="is not a job id"),
    stub("get-jdl-id-huge", "--server", "{stub}", "get-jdl", "9" * 19, says="1..92233"),
    stub("status-id-superscript", "--server", "{stub}", "status", "\u00b2", says="not a job id"),
    stub("status-nothing", "--server", "{stub}", "status", says="give job ids"),
    stub("status-id-file", "--server", "{stub}", "status", "-f", "/nonexistent", says="-f"),
    stub("status-id-garbage", "--server", "{stub}", "status", "-f", "{file}", says=":1:"),
    stub("status-unknown", "--server", "{stub}", "status", "999", says="job 999: no such job"),
    stub("kill-unknown", "--server", "{stub}", "kill", "999", says="job 999: no such job"),
    stub("kill-ended", "--server", "{stub}", "kill", "{killed}", says="is already Killed"),
    stub("reschedule-waiting", "--server", "{stub}", "reschedule", "{waiting}", says="Waiting"),
    stub("delete-unknown", "--server", "{stub}", "delete", "999", says="job 999"),
    stub(
        "output-none", "--server", "{stub}", "get-output", "{waiting}", says="has no output sandbox"
    ),
    stub(
        "logging-unknown", "--server", "{stub}", "logging-info", "999", says="job 999: no such job"
    ),
    stub("jdl-unknown", "--server", "{stub}", "get-jdl", "999", says="job 999: no such job"),
    stub(
        "parameters-unknown", "--server", "{stub}", "parameters", "999", says="job 999: no such job"
    ),
    stub("peek-unknown", "--server", "{stub}", "peek", "999", says="job 999: no such job"),
    stub("peek-lines", "--server", "{stub}", "peek", "1", "-n", "0", says="--lines"),
    stub("get-file-not-lfn", "--server", "{stub}", "get-file", "vo/x", says="not an LFN"),
    stub("get-file-root", "--server", "{stub}", "get-file", "/", says="'/' is not an LFN"),
    stub("get-file-dots", "--server", "{stub}", "get-file", "/vo/..", says="not an LFN"),
    stub("put-file-dir-lfn", "--server", "{stub}", "put-file", "/vo/", "{file}", says="not an"),
    stub("put-file-query", "--server", "{stub}", "put-file", "/vo/a?b", "{file}", says="'?'"),
    stub("get-file-unknown", "--server", "{stub}", "get-file", "/vo/none", says="no file"),
    stub(
        "get-file-dir", "--server", "{stub}", "get-file", "/vo/x", "--dir", "{file}", says="--dir"
    ),
    stub(
        "put-file-missing", "--server", "{stub}", "put-file", "/vo/x", "/nonexistent", says="nonex"
    ),
    stub("put-file-dir", "--server", "{stub}", "put-file", "/vo/x", "{tmp}", says="no such file"),
    stub("submit-missing", "--server", "{stub}", "submit", "/nonexistent.jdl", says="nonexistent"),
    stub(
        "submit-bad",
        "--server",
        "{stub}",
        "submit",
        "{bad_jdl}",
        code=JDL,
        says="bad.jdl:2:13: unterminated",
    ),
    stub(
        "submit-invalid", "--server", "{stub}", "submit", "{sem_jdl}", code=JDL, says="sem.jdl: Num"
    ),
    stub(
        "submit-too-many", "--server", "{stub}", "submit", "{huge_jdl}", code=JDL, says="huge.jdl: "
    ),
    stub(
        "submit-binary", "--server", "{stub}", "submit", "{bin_jdl}", code=JDL, says="bin.jdl:1:1: "
    ),
    pilot("jdl-too-many", "jdl", "--expand", "{huge_jdl}", code=JDL, says="huge.jdl: Parameters"),
    pilot("jdl-binary", "jdl", "{bin_jdl}", code=JDL, says="bin.jdl:1:1: invalid UTF-8"),
    stub(
        "submit-no-input", "--server", "{stub}", "submit", "{lost_jdl}", code=SANDBOX, says="lost"
    ),
    stub("pilot-log-unknown", "--server", "{stub}", "pilots", "--log", "nobody", says="nobody"),
    stub("pilot-log-path", "--server", "{stub}", "pilots", "--log", "a/b", says="not a pilot"),
    stub("pilot-log-empty", "--server", "{stub}", "pilots", "--log", "", says="--log ''"),
    stub("no-such-command", "frobnicate", says="invalid choice"),
    stub("jobs-status", "--server", "{stub}", "jobs", "--status", "Waitng", says="'Waiting'"),
    stub("jobs-bad-flag", "jobs", "--bogus", says="--bogus"),
]


class _HtmlHandler(http.server.BaseHTTPRequestHandler):
    """Another web server on the port the user typed: HTML error pages."""

    def _answer(self) -> None:
        body = b"<html><body><h1>404 Not Found</h1><p>nothing here</p></body></html>\n"
        self.send_response(404)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    tmp = tmp_path_factory.mktemp("bad-input")
    handle: Stub = start_stub(tmp / "stub")
    html = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HtmlHandler)
    threading.Thread(target=html.serve_forever, daemon=True).start()
    try:
        (tmp / "plain.txt").write_text("not a URL, not a database, not job ids\n")
        (tmp / "bad.jdl").write_text('Executable = "x";\nArguments = "open\n')
        (tmp / "lost.jdl").write_text('Executable = "x"; InputSandbox = {"lost.txt"};\n')
        (tmp / "sem.jdl").write_text('Executable = "x"; NumberOfProcessors = "many";\n')
        (tmp / "huge.jdl").write_text('Executable = "x"; Parameters = 100000; Arguments = "%n";')
        (tmp / "bin.jdl").write_bytes(b"\xff\xfe\x00 not a text")
        (killed,) = handle.submit('Executable = "/bin/true";')
        handle.client.kill(killed)
        (waiting,) = handle.submit('Executable = "/bin/true";')
        yield {
            "tmp": str(tmp),
            "file": str(tmp / "plain.txt"),
            "bad_jdl": str(tmp / "bad.jdl"),
            "lost_jdl": str(tmp / "lost.jdl"),
            "sem_jdl": str(tmp / "sem.jdl"),
            "huge_jdl": str(tmp / "huge.jdl"),
            "bin_jdl": str(tmp / "bin.jdl"),
            "stub": handle.url,
            "stub_https": handle.url.replace("http://", "https://"),
            "html": f"http://127.0.0.1:{html.server_address[1]}",
            "killed": str(killed),
            "waiting": str(waiting),
        }
    finally:
        html.shutdown()
        html.server_close()
        handle.client.close()
        handle.server.stop()


def _run(
    case: Case, world: dict[str, str], argv: tuple[str, ...]
) -> subprocess.CompletedProcess[str]:
    values = dict(world)
    if case.toml is not None:
        path = Path(world["tmp"]) / f"{case.name}.toml"
        path.write_bytes(case.toml.encode("utf-8", "surrogateescape"))
        values["toml"] = str(path)
    args = [a.format(**values) for a in argv]
    return subprocess.run(
        [str(BIN / case.prog), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=world["tmp"],
        env=pilot_env(**case.env),
    )


def _check(done: subprocess.CompletedProcess[str], case: Case, code: int) -> None:
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == code, done.stderr
    assert len(lines) == 1, f"expected one line, got:\n{done.stderr}"
    assert case.says in lines[0], lines[0]


def test_the_table_is_big_enough() -> None:
    assert len(CASES) >= 60
    assert len({c.name + c.prog for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.prog}-{c.name}")
def test_bad_input(case: Case, world: dict[str, str]) -> None:
    _check(_run(case, world, case.argv), case, case.code)


def test_a_check_option_beyond_any_float_is_a_whole_number(tmp_path: Path) -> None:
    """``[checks.disk] min_free_mb = 999...9`` (400 digits) made math.isfinite overflow."""
    path = tmp_path / "huge.toml"
    path.write_text(f"[checks.disk]\nmin_free_mb = {'9' * 400}\n")
    cfg, origins = config.load({}, env={}, config_file=path)
    config.check_options(cfg, origins, {"disk": {"min_free_mb": "int"}})


SETTINGS = [c for c in CASES if c.setting]


@pytest.mark.parametrize("case", SETTINGS, ids=lambda c: c.name)
def test_config_check_refuses_the_same(case: Case, world: dict[str, str]) -> None:
    assert case.argv[0] == "run"
    done = _run(case, world, ("config", "--check", *case.argv[1:]))
    _check(done, case, USAGE)
    assert "configuration OK" not in done.stdout
