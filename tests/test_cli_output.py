"""What users read: --help of every subcommand, the README's usage section, the logs,
and how settings are understood (the same from the file, the environment and flags)."""

from __future__ import annotations

import argparse
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pilot import cli, cliutil, config
from pilot.errors import UsageError
from server_stub import cli as stub_cli
from tests.conftest import BIN, FAST, REPO, Stub, pilot_env, run_pilot


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("no subcommands")


@pytest.mark.parametrize("program", ["pilot", "pilot-stub"])
def test_every_option_has_help_and_a_default(program: str) -> None:
    parser = cli.build_parser() if program == "pilot" else stub_cli.build_parser()
    for name, sub in _subcommands(parser).items():
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            where = f"{program} {name} {'/'.join(action.option_strings) or action.dest}"
            assert action.help and action.help != argparse.SUPPRESS, where
            takes_value = action.option_strings and action.nargs != 0
            if takes_value and not action.required:
                assert "default" in action.help, where


def test_subcommands_list_only_their_options() -> None:
    subs = _subcommands(cli.build_parser())
    flags = {name: {s for a in p._actions for s in a.option_strings} for name, p in subs.items()}
    assert {"--max-jobs", "--heartbeat-interval", "--server"} <= flags["run"]
    assert "--max-jobs" not in flags["check"] and "--heartbeat-interval" not in flags["check"]
    assert "--server" not in flags["local"] and "--grace" in flags["local"]
    assert flags["jdl"] == {"-h", "--help", "--expand"}
    shown = subprocess.run(
        [str(BIN / "pilot"), "check", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "--max-jobs" not in shown and "(default: 30.0" in shown


def test_readme_usage_is_what_help_says() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "readme_usage.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr


def test_both_programs_have_a_version() -> None:
    for program in ("pilot", "pilot-stub"):
        done = subprocess.run([str(BIN / program), "--version"], capture_output=True, text=True)
        assert done.returncode == 0 and re.match(r"pilot-(agent|stub) \d", done.stdout)


def test_lists_are_split_the_same_from_flags_environment_and_file(tmp_path: Path) -> None:
    conf = tmp_path / "p.toml"
    conf.write_text('tags = ["a", "b"]\n')
    from_file, _ = config.load({}, env={}, config_file=conf)
    from_env, _ = config.load({}, env={"PILOT_TAGS": "a,b"})
    from_flag, _ = config.load({"tags": ["a,b"]}, env={})
    from_flags, _ = config.load({"tags": ["a", "b"]}, env={})
    assert from_file.tags == from_env.tags == from_flag.tags == from_flags.tags == ["a", "b"]


def test_values_are_written_back_as_users_write_them() -> None:
    cfg, origins = config.load({"tags": ["x,y"], "cores": "3"}, env={"PILOT_VO": "myvo"})
    shown = config.show(cfg, origins)
    assert 'tags = ["x", "y"]' in shown and "cores = 3" in shown and "['x'" not in shown
    assert "None" not in shown
    assert json.loads(config.show_json(cfg, origins))["settings"]["cores"] == 3


def test_choices_are_case_blind_and_names_are_suggested() -> None:
    cfg, _ = config.load({"log_level": "debug"}, env={})
    assert cfg.log_level == "DEBUG"
    with pytest.raises(UsageError, match=r"did you mean 'apptainer'"):
        config.load({"isolation": "aptainer"}, env={})


def test_json_logs_are_json_only_and_name_the_job(stub: Stub, tmp_path: Path) -> None:
    (job,) = stub.submit(
        'Executable = "/bin/echo"; Arguments = "hi"; StdOutput = "StdOut";'
        ' OutputSandbox = {"StdOut"};'
    )
    done = run_pilot(
        ["run", "--server", stub.url, *FAST, "--max-jobs", "1", "--log-format", "json"],
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stderr.splitlines()]  # JSON, nothing else
    about_job = [r for r in records if r.get("job") == str(job)]
    assert any("Done" in r["message"] for r in about_job), records
    packing = [r for r in records if r["logger"] == "pilot.job.outpack"]  # no id in the text
    assert packing and all(r.get("job") == str(job) for r in packing), packing
    assert all(set(r) >= {"time", "level", "logger", "message"} for r in records)


def test_text_logs_carry_the_date(stub: Stub, tmp_path: Path) -> None:
    done = run_pilot(["run", "--server", stub.url, *FAST, "--idle-timeout", "0"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert lines and all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [A-Z]+ ", ln) for ln in lines)
    text = done.stderr
    assert "job None" not in text and "None s left" not in text
    assert "stopped because stopped" not in text and "no job matched for 0 s" in text


def test_errors_before_logging_are_json_when_json_was_asked_for(tmp_path: Path) -> None:
    for args, env in (
        (["run", "--log-format", "json", "--cores", "-4"], {}),
        (["run", "--cores", "-4"], {"PILOT_LOG_FORMAT": "json"}),
    ):
        done = run_pilot(args, cwd=tmp_path, env={**pilot_env(), **env})
        (line,) = done.stderr.splitlines()
        record = json.loads(line)
        assert done.returncode == 2 and record["level"] == "ERROR"
        assert record["message"].startswith("--cores -4: ")


def test_every_option_a_builtin_check_reads_is_declared() -> None:
    """config --check refuses undeclared [checks.<name>] keys of the built-ins, so each
    option a built-in check reads must be in checks.BUILTIN_OPTIONS (and nothing else)."""
    from checks import BUILTIN_CHECKS, BUILTIN_OPTIONS

    read = re.compile(r'(?:option_\w+\(ctx, NAME, |ctx\.option\(NAME, )"(\w+)"')
    for check in BUILTIN_CHECKS:
        source = Path(sys.modules[type(check).__module__].__file__ or "").read_text()
        assert set(read.findall(source)) == set(BUILTIN_OPTIONS[check.name]), check.name


def test_an_unfit_node_says_so_once(stub: Stub, tmp_path: Path) -> None:
    checks = tmp_path / "checks.d"
    checks.mkdir()
    (checks / "vo-sw").write_text("#!/bin/sh\necho 'VO software missing' >&2\nexit 1\n")
    (checks / "vo-sw").chmod(0o755)
    required = ["--checks-dir", str(checks), "--require-check", "vo-sw"]
    done = run_pilot(["run", "--server", stub.url, *FAST, *required], cwd=tmp_path)
    errors = [line for line in done.stderr.splitlines() if " ERROR " in line]
    assert done.returncode == 30 and len(errors) == 1, done.stderr
    assert errors[0].endswith("node not fit: required check(s) failed: vo-sw; taking no job")
    (pilot,) = stub.client.pilots()
    assert "node not fit" in stub.client.pilot_log(pilot["stamp"])  # the uploaded log too


def test_the_readme_dirac_table_is_a_valid_configuration(tmp_path: Path) -> None:
    text = (REPO / "README.md").read_text()
    block = text.split("```toml\n[dirac]\n", 1)[1].split("```", 1)[0]
    conf = tmp_path / "dirac.toml"
    conf.write_text("[dirac]\n" + block.replace("# [dirac.", "[dirac.").replace("# SE-", "SE-"))
    cfg, _ = config.load({}, env={}, config_file=conf)
    assert cfg.dirac["proxymanager"].startswith("dips://")
    assert cfg.dirac["storage_elements"]["SE-DISK"].startswith("dips://")
    conf.write_text('[dirac.storage_elements]\nSE-DISK = "https://se.example.org/x"\n')
    with pytest.raises(UsageError, match=r"\[dirac.storage_elements\] SE-DISK"):
        config.load({}, env={}, config_file=conf)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_progress_line_cut_short_is_ended_before_the_error() -> None:
    screen = _Terminal()
    progress = cliutil.TerminalProgress(screen, interval=0)
    progress.end_line()
    assert screen.getvalue() == ""  # nothing drawn: nothing to end
    progress("upload big.bin", 6 << 20, 24 << 20, False)
    progress.end_line()  # the upload failed here
    print("pilot-stub: the error", file=screen)
    assert screen.getvalue().splitlines()[-1] == "pilot-stub: the error"
    before = screen.getvalue()
    progress("upload big.bin", 24 << 20, 24 << 20, True)
    drawn = screen.getvalue()[len(before) :]
    progress.end_line()  # a finished line ends itself: nothing more
    assert drawn.startswith("\rupload big.bin: 24.0 of 24.0 MiB 100 %") and drawn.endswith("\n")
    assert screen.getvalue() == before + drawn
