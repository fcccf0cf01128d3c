"""The built-in checks, on this machine and with fake inputs where the real thing is absent."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from checks import BUILTIN_CHECKS, _db12, _util
from checks import cpu as cpu_module
from checks import cvmfs as cvmfs_module
from checks.container import ContainerCheck
from checks.cpu import CpuCheck, parse_cpuinfo, x86_levels
from checks.credentials import CredentialsCheck
from checks.cvmfs import CvmfsCheck
from checks.disk import DiskCheck
from checks.gpu import GpuCheck
from checks.load import LoadCheck
from checks.memory import MemoryCheck
from checks.software import SoftwareCheck, dirac_platform, parse_os_release
from pilot.api import CheckContext, CheckOutcome, CredentialError, Status, Token
from pilot.grid.resolve import Credentials, resolve
from pilot.node import checking
from pilot.node.batch import BatchInfo
from pilot.node.checking import CheckSettings
from tests.conftest import unavailable

MB = 1024 * 1024
V2_FLAGS = "fpu cx8 cmov mmx fxsr sse sse2 syscall lm cx16 lahf_lm popcnt pni sse4_1 sse4_2 ssse3"


Options = dict[str, dict[str, Any]]


def context(
    work: Path, options: Options | None = None, cores: int = 1, mb: int | None = None
) -> CheckContext:
    info = BatchInfo("local", None, cores, mb, None)
    # the proxy as the pilot resolves it from the environment (located, not loaded)
    return CheckContext(work, info, options or {}, credentials=resolve(load=False))


def script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return path


# --- the whole set ---------------------------------------------------------------


def test_builtin_set_runs_fast_with_json_facts(tmp_path: Path) -> None:
    cores = len(os.sched_getaffinity(0))
    start = time.monotonic()
    report = checking.run(
        context(tmp_path, cores=cores), CheckSettings(entry_points=False), BUILTIN_CHECKS
    )
    elapsed = time.monotonic() - start
    assert elapsed < 3.0, f"built-in checks took {elapsed:.2f} s"
    names = [
        "cpu",
        "memory",
        "disk",
        "software",
        "cvmfs",
        "credentials",
        "container",
        "gpu",
        "load",
    ]
    assert [r.name for r in report.results] == names
    assert json.loads(json.dumps(report.to_json()))["results"][0]["facts"]["cores"] == cores
    assert report.ok, checking.format_table(report)
    assert report.result("cvmfs").status is Status.SKIPPED  # type: ignore[union-attr]


def test_bad_option_fails_the_check_with_a_clear_message(tmp_path: Path) -> None:
    ctx = context(tmp_path, {"cpu": {"benchmark_seconds": "fast"}})
    result = checking.run(ctx, CheckSettings(entry_points=False), [CpuCheck()]).results[0]
    assert result.status is Status.FAILED
    assert "option checks.cpu.benchmark_seconds: expected a non-negative number" in result.message


# --- cpu -------------------------------------------------------------------------


def test_cpu_on_this_machine(tmp_path: Path) -> None:
    cores = len(os.sched_getaffinity(0))
    outcome = CpuCheck().run(context(tmp_path, cores=cores))
    assert outcome.status is Status.PASSED, outcome.message
    facts = outcome.facts
    assert facts["cores"] == cores and facts["benchmark_copies"] == min(cores, 8)
    assert isinstance(facts["benchmark"], float) and 0.5 < facts["benchmark"] < 500
    assert facts["benchmark_unit"] == "DB12"
    if platform.machine() == "x86_64":
        assert "x86-64-v1" in outcome.tags and facts["microarch"] in outcome.tags
    assert set(outcome.tags) >= set(x86_levels(frozenset(facts["flags"])))


def test_cpu_with_fake_cpuinfo_x86_64_v2(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel\t\t: 85\nmodel name\t: Old Xeon\n"
        f"flags\t\t: {V2_FLAGS} avx\n\nprocessor\t: 1\nflags\t\t: {V2_FLAGS} avx avx2 avx512f\n"
    )
    ctx = context(tmp_path, {"cpu": {"cpuinfo": str(cpuinfo), "benchmark": False}})
    outcome = CpuCheck().run(ctx)
    assert outcome.tags == ("x86-64-v1", "x86-64-v2")  # avx2 is only on the second block
    assert outcome.facts["model"] == "Old Xeon" and outcome.facts["microarch"] == "x86-64-v2"
    assert "benchmark" not in outcome.facts


def test_cpu_with_fake_arm_cpuinfo(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm aes\n\n")
    outcome = CpuCheck().run(
        context(tmp_path, {"cpu": {"cpuinfo": str(cpuinfo), "benchmark": False}})
    )
    assert outcome.tags == () and outcome.facts["microarch"] is None
    assert outcome.facts["flags"] == ["aes", "asimd", "evtstrm", "fp"]


def test_cpu_warns_when_the_slot_claims_more_cores_than_usable(tmp_path: Path) -> None:
    ctx = context(tmp_path, {"cpu": {"benchmark": False}}, cores=len(os.sched_getaffinity(0)) + 4)
    outcome = CpuCheck().run(ctx)
    assert outcome.status is Status.WARNING and "usable" in outcome.message


def test_cpu_benchmark_in_process_without_a_helper_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cpu_module, "python_script", lambda script: None)
    outcome = CpuCheck().run(context(tmp_path, {"cpu": {"benchmark_seconds": 0.2}}, cores=2))
    assert outcome.facts["benchmark_copies"] == 1 and outcome.facts["benchmark"] > 0


def test_db12_scaling() -> None:
    assert _db12.score(_db12.REFERENCE_DRAWS, 10.0) == pytest.approx(25.0)
    assert _db12.score(_db12.REFERENCE_DRAWS // 10, 0.5) == pytest.approx(50.0)
    with pytest.raises(ValueError):
        _db12.score(0, 1.0)


def test_parse_cpuinfo_and_levels() -> None:
    model, flags = parse_cpuinfo(f"model name : X\nflags : {V2_FLAGS}\n")
    assert model == "X" and x86_levels(flags) == ("x86-64-v1", "x86-64-v2")
    assert x86_levels(flags - {"popcnt"}) == ("x86-64-v1",)
    assert x86_levels(frozenset()) == ()


# --- memory ----------------------------------------------------------------------


def test_memory_on_this_machine(tmp_path: Path) -> None:
    outcome = MemoryCheck().run(context(tmp_path))
    assert outcome.status is Status.PASSED, outcome.message
    assert outcome.facts["total_mb"] == psutil.virtual_memory().total // MB
    assert 0 < outcome.facts["available_mb"] <= outcome.facts["total_mb"]


def _fake_meminfo(tmp_path: Path, total_kb: int = 8_388_608, available_kb: int = 4_194_304) -> Path:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(
        f"MemTotal:       {total_kb} kB\nMemFree:   1000 kB\nMemAvailable:   {available_kb} kB\n"
        "SwapTotal:      1048576 kB\n"
    )
    return meminfo


def test_memory_cgroup_v2_smallest_limit_on_the_path(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    (root / "job" / "step").mkdir(parents=True)
    (root / "cgroup.controllers").write_text("memory cpu\n")
    (root / "job" / "memory.max").write_text(f"{2048 * MB}\n")
    (root / "job" / "step" / "memory.max").write_text("max\n")
    proc_cgroup = tmp_path / "proc-cgroup"
    proc_cgroup.write_text("0::/job/step\n")
    options = {"meminfo": str(_fake_meminfo(tmp_path)), "proc_cgroup": str(proc_cgroup)}
    options["cgroup_root"] = str(root)
    outcome = MemoryCheck().run(context(tmp_path, {"memory": options}, mb=1024))
    assert outcome.status is Status.PASSED, outcome.message
    facts = outcome.facts
    assert (facts["total_mb"], facts["available_mb"], facts["swap_total_mb"]) == (8192, 4096, 1024)
    assert (facts["cgroup_version"], facts["cgroup_limit_mb"], facts["usable_mb"]) == (
        2,
        2048,
        2048,
    )


def test_memory_cgroup_v1_and_slot_larger_than_limit(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    (root / "memory" / "slot").mkdir(parents=True)
    (root / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    (root / "memory" / "slot" / "memory.limit_in_bytes").write_text(f"{1024 * MB}\n")
    proc_cgroup = tmp_path / "proc-cgroup"
    proc_cgroup.write_text("5:cpu,cpuacct:/\n4:memory:/slot\n0::/\n")
    options = {"meminfo": str(_fake_meminfo(tmp_path)), "proc_cgroup": str(proc_cgroup)}
    options["cgroup_root"] = str(root)
    outcome = MemoryCheck().run(context(tmp_path, {"memory": options}, mb=4000))
    assert (outcome.facts["cgroup_version"], outcome.facts["cgroup_limit_mb"]) == (1, 1024)
    assert outcome.status is Status.WARNING
    assert outcome.message == "slot claims 4000 MB but only 1024 MB usable"


def test_memory_floor_and_unreadable_meminfo(tmp_path: Path) -> None:
    options = {
        "meminfo": str(_fake_meminfo(tmp_path, available_kb=100 * 1024)),
        "min_available_mb": 512,
    }
    outcome = MemoryCheck().run(context(tmp_path, {"memory": options}))
    assert outcome.status is Status.FAILED and "100 MB available" in outcome.message
    missing = MemoryCheck().run(context(tmp_path, {"memory": {"meminfo": str(tmp_path / "none")}}))
    assert missing.status is Status.FAILED


# --- disk ------------------------------------------------------------------------


def test_disk_on_this_machine(tmp_path: Path) -> None:
    outcome = DiskCheck().run(context(tmp_path))
    assert outcome.status is Status.PASSED, outcome.message
    assert outcome.facts["writable"] is True
    assert abs(outcome.facts["free_mb"] - psutil.disk_usage(str(tmp_path)).free // MB) < 512
    assert list(tmp_path.iterdir()) == []  # the write probe cleaned up


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"min_free_mb": 1 << 40}, "MB free, below the"),
        ({"min_free_inodes": 1 << 62}, "inodes free, below"),
    ],
)
def test_disk_floors(tmp_path: Path, options: dict[str, int], expected: str) -> None:
    outcome = DiskCheck().run(context(tmp_path, {"disk": options}))
    assert outcome.status is Status.FAILED and expected in outcome.message


def test_disk_missing_or_unwritable_work_dir(tmp_path: Path) -> None:
    missing = DiskCheck().run(context(tmp_path / "absent"))
    assert missing.status is Status.FAILED and "No such file" in missing.message
    # /proc accepts no new files, even from root
    proc = DiskCheck().run(
        context(Path("/proc"), {"disk": {"min_free_mb": 0, "min_free_inodes": 0}})
    )
    assert proc.status is Status.FAILED and proc.facts["writable"] is False
    assert "not writable" in proc.message


# --- software ----------------------------------------------------------------------


def test_software_on_this_machine(tmp_path: Path) -> None:
    outcome = SoftwareCheck().run(context(tmp_path, {"software": {"commands": ["sh"]}}))
    assert outcome.status is Status.PASSED, outcome.message
    libc, version = platform.libc_ver()
    if libc == "glibc":
        assert outcome.facts["glibc"] == version
        assert outcome.facts["platform"] == f"Linux_{platform.machine()}_glibc-{version}"
    assert outcome.facts["kernel"] == os.uname().release
    assert outcome.facts["commands"] == {"sh": shutil.which("sh")}


def test_software_fake_os_release_and_missing_command(tmp_path: Path) -> None:
    release = tmp_path / "os-release"
    release.write_text(
        '# comment\nNAME="Alma Linux"\nID=almalinux\n'
        "VERSION_ID=\"9.4\"\nPRETTY_NAME='AlmaLinux 9.4'\n"
    )
    options = {"os_release": str(release), "commands": ["sh", "no-such-command-for-pilot"]}
    outcome = SoftwareCheck().run(context(tmp_path, {"software": options}))
    assert outcome.status is Status.FAILED
    assert outcome.message == "missing commands: no-such-command-for-pilot"
    assert (outcome.facts["os_id"], outcome.facts["os_version_id"]) == ("almalinux", "9.4")
    assert outcome.facts["os_name"] == "AlmaLinux 9.4"


def test_software_helpers() -> None:
    assert parse_os_release('ID="rocky"\nX=a\\"b\n') == {"ID": "rocky", "X": 'a\\"b'}
    assert dirac_platform("Linux", "aarch64", "2.28") == "Linux_aarch64_glibc-2.28"
    assert dirac_platform("Linux", "x86_64", None) == "Linux_x86_64"


def test_software_commands_option_must_be_a_list(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="expected a list of strings"):
        SoftwareCheck().run(context(tmp_path, {"software": {"commands": "sh"}}))


# --- cvmfs -----------------------------------------------------------------------


def _fake_cvmfs(tmp_path: Path) -> Path:
    root = tmp_path / "cvmfs"
    for repo in ("atlas.cern.ch", "lhcb.cern.ch"):
        (root / repo).mkdir(parents=True)
        (root / repo / "README").write_text(repo)
    (root / "empty.cern.ch").mkdir()
    return root


def _cvmfs(root: Path, repos: list[str], **extra: Any) -> dict[str, dict[str, Any]]:
    return {"cvmfs": {"root": str(root), "repositories": repos, **extra}}


def _probe_children() -> list[psutil.Process]:
    children = psutil.Process().children(recursive=True)
    return [c for c in children if c.is_running() and "_cvmfs_probe" in " ".join(c.cmdline())]


def test_cvmfs_nothing_configured_is_skipped(tmp_path: Path) -> None:
    assert CvmfsCheck().run(context(tmp_path)).status is Status.SKIPPED


def test_cvmfs_fake_repositories(tmp_path: Path) -> None:
    root = _fake_cvmfs(tmp_path)
    try:
        os.setxattr(root / "atlas.cern.ch", "user.revision", b"4711")
    except OSError as exc:
        # a skip, even under CI: user xattrs are a property of the file system the tests'
        # temporary folder is on (tmpfs before Linux 6.6, some overlay set-ups lack them),
        # not a tool CI installs; the revision-less path is tested above either way
        pytest.skip(f"needs user xattrs on the file system of {tmp_path}: {exc}")
    ctx = context(tmp_path, _cvmfs(root, ["atlas.cern.ch", "lhcb.cern.ch"]))
    outcome = CvmfsCheck().run(ctx)
    assert outcome.status is Status.PASSED, outcome.message
    assert outcome.tags == ("cvmfs:atlas.cern.ch", "cvmfs:lhcb.cern.ch")
    repos = outcome.facts["repositories"]
    assert repos["atlas.cern.ch"] == {"ok": True, "entries": 1, "revision": 4711}
    assert repos["lhcb.cern.ch"]["revision"] is None


def test_cvmfs_missing_and_empty_repositories_fail(tmp_path: Path) -> None:
    root = _fake_cvmfs(tmp_path)
    ctx = context(tmp_path, _cvmfs(root, ["lhcb.cern.ch", "absent.cern.ch", "empty.cern.ch"]))
    outcome = CvmfsCheck().run(ctx)
    assert outcome.status is Status.FAILED
    assert outcome.tags == ("cvmfs:lhcb.cern.ch",)
    assert "absent.cern.ch: not mounted" in outcome.message
    assert "empty.cern.ch: empty directory" in outcome.message


def test_cvmfs_stuck_repository_fails_within_the_check_timeout(tmp_path: Path) -> None:
    root = _fake_cvmfs(tmp_path)
    os.mkfifo(root / "stuck.cern.ch")  # opening it for reading blocks, like a stuck mount
    ctx = context(tmp_path, _cvmfs(root, ["atlas.cern.ch", "stuck.cern.ch"]))
    settings = CheckSettings(entry_points=False, timeouts={"cvmfs": 1.0})
    start = time.monotonic()
    result = checking.run(ctx, settings, [CvmfsCheck()]).results[0]
    assert time.monotonic() - start < 1.0 + 1.0
    assert result.status is Status.FAILED and result.required
    assert "stuck.cern.ch: timed out" in result.message
    assert result.tags == ("cvmfs:atlas.cern.ch",)
    assert _probe_children() == []  # the stuck probe was killed, not left behind


def test_cvmfs_probe_timeout_option(tmp_path: Path) -> None:
    root = _fake_cvmfs(tmp_path)
    os.mkfifo(root / "stuck.cern.ch")
    ctx = context(tmp_path, _cvmfs(root, ["stuck.cern.ch"], probe_timeout=0.5))
    start = time.monotonic()
    outcome = CvmfsCheck().run(ctx)
    assert time.monotonic() - start < 0.5 + 1.0
    assert outcome.status is Status.FAILED and "timed out" in outcome.message


def test_frozen_pilot_runs_helpers_as_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    argv = _util.python_script(Path(_util.__file__).with_name("_db12.py"))
    assert argv == [sys.executable, "--pilot-helper", "_db12"]


def test_cvmfs_in_process_probe_without_a_helper_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cvmfs_module, "python_script", lambda script: None)
    root = _fake_cvmfs(tmp_path)
    fifo = root / "stuck.cern.ch"
    os.mkfifo(fifo)
    ctx = context(tmp_path, _cvmfs(root, ["atlas.cern.ch", "stuck.cern.ch"], probe_timeout=0.5))
    try:
        outcome = CvmfsCheck().run(ctx)
    finally:  # release the abandoned probe thread blocked in open()
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert outcome.status is Status.FAILED and outcome.tags == ("cvmfs:atlas.cern.ch",)
    assert "stuck.cern.ch: timed out after 0.5 s" in outcome.message


# --- credentials -------------------------------------------------------------------


def _proxy(path: Path, not_after: dt.datetime) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Pilot Tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, "Test User"),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_after - dt.timedelta(days=1))
        .not_valid_after(not_after)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + key_pem)
    path.chmod(0o600)
    return cert


@pytest.fixture
def no_tokens(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for var in ("BEARER_TOKEN", "BEARER_TOKEN_FILE", "XDG_RUNTIME_DIR", "X509_USER_PROXY"):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_credentials_valid_proxy(tmp_path: Path, no_tokens: pytest.MonkeyPatch) -> None:
    proxy = tmp_path / "x509up"
    cert = _proxy(proxy, dt.datetime.now(dt.UTC) + dt.timedelta(hours=2))
    no_tokens.setenv("X509_USER_PROXY", str(proxy))
    outcome = CredentialsCheck().run(context(tmp_path))
    assert outcome.status is Status.PASSED, outcome.message
    assert (
        outcome.facts["identity"] == cert.subject.rfc4514_string() == "CN=Test User,O=Pilot Tests"
    )
    assert outcome.facts["proxy_path"] == str(proxy)
    assert 7200 - 120 < outcome.facts["time_left"] <= 7200


def test_credentials_reports_the_proxy_the_pilot_resolved_without_reading_it_again(
    tmp_path: Path, no_tokens: pytest.MonkeyPatch
) -> None:
    proxy = tmp_path / "x509up"
    _proxy(proxy, dt.datetime.now(dt.UTC) + dt.timedelta(hours=2))
    no_tokens.setenv("X509_USER_PROXY", str(proxy))
    info = BatchInfo("local", None, 1, None, None)
    ctx = CheckContext(tmp_path, info, {}, credentials=resolve())  # loaded, as `pilot run` does
    proxy.write_text("not a certificate")  # a second read would fail
    outcome = CredentialsCheck().run(ctx)
    assert outcome.status is Status.PASSED, outcome.message
    assert outcome.facts["identity"] == "CN=Test User,O=Pilot Tests"


def test_credentials_expired_absent_and_garbage(
    tmp_path: Path, no_tokens: pytest.MonkeyPatch
) -> None:
    proxy = tmp_path / "x509up"
    _proxy(proxy, dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5))
    no_tokens.setenv("X509_USER_PROXY", str(proxy))
    expired = CredentialsCheck().run(context(tmp_path))
    assert expired.status is Status.FAILED and "expired" in expired.message
    assert expired.facts["time_left"] < 0
    no_tokens.setenv("X509_USER_PROXY", str(tmp_path / "absent"))
    assert CredentialsCheck().run(context(tmp_path)).status is Status.WARNING
    strict = context(tmp_path, {"credentials": {"required": True}})
    assert CredentialsCheck().run(strict).status is Status.FAILED
    proxy.write_text("not a certificate")
    no_tokens.setenv("X509_USER_PROXY", str(proxy))
    garbage = CredentialsCheck().run(context(tmp_path))
    assert garbage.status is Status.FAILED and "cannot read proxy" in garbage.message


def test_credentials_check_reports_the_token_the_pilot_resolved(
    tmp_path: Path, no_tokens: pytest.MonkeyPatch
) -> None:
    """The check looks for no token itself: it reports the one the pilot found once
    (``ctx.credentials.token``), here with none in the environment, and never its value."""
    secret = "eyJhbGciOiJSUzI1NiJ9.resolved-once"
    found = Credentials(token=Token(secret, "BEARER_TOKEN"))
    ctx = CheckContext(tmp_path, BatchInfo("local", None, 1, None, None), {}, credentials=found)
    outcome = CredentialsCheck().run(ctx)
    assert outcome.facts["token_source"] == "BEARER_TOKEN"
    assert secret not in json.dumps(outcome.facts) and secret not in outcome.message


def test_an_unreadable_token_is_carried_to_the_check_not_raised(
    tmp_path: Path, no_tokens: pytest.MonkeyPatch
) -> None:
    no_tokens.setenv("BEARER_TOKEN_FILE", str(tmp_path / "missing-token"))
    with pytest.raises(CredentialError, match="missing-token"):
        resolve()  # pilot run stops on it (exit 31)
    found = resolve(load=False)  # pilot check reports it
    assert found.token is None and found.token_error and "missing-token" in found.token_error
    outcome = CredentialsCheck().run(context(tmp_path))
    assert outcome.facts["token_source"] is None
    assert outcome.facts["token_error"] == found.token_error


def test_credentials_token_discovery_order_never_reveals_the_token(
    tmp_path: Path, no_tokens: pytest.MonkeyPatch
) -> None:
    secret = "eyJhbGciOiJSUzI1NiJ9.secret-token-value"
    runtime = tmp_path / "run"
    runtime.mkdir()
    (runtime / f"bt_u{os.getuid()}").write_text(secret)
    token_file = tmp_path / "token"
    token_file.write_text(secret)
    no_tokens.setenv("X509_USER_PROXY", str(tmp_path / "absent"))
    no_tokens.setenv("XDG_RUNTIME_DIR", str(runtime))
    no_tokens.setenv("BEARER_TOKEN_FILE", str(token_file))
    no_tokens.setenv("BEARER_TOKEN", secret)
    sources = []
    for unset in ("BEARER_TOKEN", "BEARER_TOKEN_FILE", None):
        report = checking.run(
            context(tmp_path), CheckSettings(entry_points=False), [CredentialsCheck()]
        )
        assert secret not in json.dumps(report.to_json())
        sources.append(report.facts("credentials")["token_source"])
        if unset:
            no_tokens.delenv(unset)
    assert sources == [
        "BEARER_TOKEN",
        f"BEARER_TOKEN_FILE={token_file}",
        f"{runtime}/bt_u{os.getuid()}",
    ]


# --- container ---------------------------------------------------------------------


def test_container_on_this_machine(tmp_path: Path) -> None:
    outcome = ContainerCheck().run(context(tmp_path))
    for tool in ("apptainer", "singularity", "bwrap"):
        assert (outcome.facts[tool] is None) == (shutil.which(tool) is None)
        assert (tool in outcome.tags) == bool(outcome.facts[tool] and outcome.facts[tool]["usable"])
    assert outcome.status in (Status.PASSED, Status.WARNING)


def test_container_real_bwrap(tmp_path: Path) -> None:
    if shutil.which("bwrap") is None:
        unavailable("needs bwrap (bubblewrap; make system-deps installs it)")
    outcome = ContainerCheck().run(context(tmp_path))
    if outcome.facts["bwrap"]["usable"]:
        assert "bwrap" in outcome.tags
    else:  # present but unable to make a user namespace here: a warning, with the reason
        assert outcome.status is Status.WARNING and "bwrap:" in outcome.message


def test_container_fake_runtimes(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script(bin_dir / "apptainer", 'echo "apptainer version 1.3.4"')
    script(bin_dir / "singularity", 'echo "FATAL: broken install" >&2; exit 1')
    script(bin_dir / "bwrap", 'case "$*" in *"--unshare-user true") exit 0;; esac; exit 1')
    outcome = ContainerCheck().run(context(tmp_path, {"container": {"path": str(bin_dir)}}))
    assert outcome.tags == ("apptainer", "bwrap")
    assert outcome.facts["apptainer"]["version"] == "apptainer version 1.3.4"
    assert outcome.facts["singularity"]["usable"] is False
    assert outcome.status is Status.WARNING
    assert outcome.message == "singularity: FATAL: broken install"


def test_container_none_present(tmp_path: Path) -> None:
    outcome = ContainerCheck().run(context(tmp_path, {"container": {"path": str(tmp_path)}}))
    assert (outcome.status, outcome.tags) == (Status.PASSED, ())
    assert outcome.message == "no container runtime found"


# --- gpu ---------------------------------------------------------------------------

SMI_OUTPUT = (
    "GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-aaaa-0000)\n"
    "GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-bbbb-1111)\n"
)


def test_gpu_on_this_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    outcome = GpuCheck().run(context(tmp_path))
    assert outcome.facts["count"] == len(outcome.facts["models"])
    assert (outcome.tags == ("GPU",)) == (outcome.facts["count"] > 0)
    if shutil.which("nvidia-smi") is None and not Path("/proc/driver/nvidia/gpus").exists():
        assert (outcome.status, outcome.facts["count"]) == (Status.PASSED, 0)


def test_gpu_fake_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    smi = script(tmp_path / "nvidia-smi", f"printf '{SMI_OUTPUT}'")
    ctx = context(tmp_path, {"gpu": {"nvidia_smi": str(smi)}})
    outcome = GpuCheck().run(ctx)
    assert (outcome.status, outcome.tags, outcome.facts["count"]) == (Status.PASSED, ("GPU",), 2)
    assert outcome.facts["models"] == ["NVIDIA A100-SXM4-40GB", "NVIDIA H100 80GB HBM3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-bbbb-1111")
    assert GpuCheck().run(ctx).facts["models"] == ["NVIDIA H100 80GB HBM3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert GpuCheck().run(ctx).tags == ()


def test_gpu_broken_nvidia_smi_falls_back_to_proc(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    smi = script(tmp_path / "nvidia-smi", "echo 'NVIDIA-SMI has failed' >&2; exit 9")
    gpus = tmp_path / "gpus" / "0000:3b:00.0"
    gpus.mkdir(parents=True)
    (gpus / "information").write_text("Model: \t\t Tesla V100-PCIE-32GB\nIRQ:   52\n")
    ctx = context(tmp_path, {"gpu": {"nvidia_smi": str(smi), "proc_dir": str(gpus.parent)}})
    outcome = GpuCheck().run(ctx)
    assert outcome.status is Status.WARNING and "NVIDIA-SMI has failed" in outcome.message
    assert outcome.facts["models"] == ["Tesla V100-PCIE-32GB"] and outcome.tags == ("GPU",)
    assert outcome.facts["source"] == "proc"


# --- load --------------------------------------------------------------------------


def test_load_on_this_machine(tmp_path: Path) -> None:
    outcome = LoadCheck().run(context(tmp_path))
    assert outcome.facts["cpus"] == os.cpu_count()
    expected = Status.WARNING if outcome.facts["load_per_core"] > 2.0 else Status.PASSED
    assert outcome.status is expected


@pytest.mark.parametrize(
    ("line", "limit", "status"),
    [
        ("9.00 4.00 1.00 3/120 4242", 2.0, Status.WARNING),
        ("9.00 4.00 1.00 3/120 4242", 10.0, Status.PASSED),
    ],
)
def test_load_fake_loadavg(tmp_path: Path, line: str, limit: float, status: Status) -> None:
    loadavg = tmp_path / "loadavg"
    loadavg.write_text(line + "\n")
    options = {"load": {"loadavg": str(loadavg), "max_load_per_core": limit}}
    outcome: CheckOutcome = LoadCheck().run(context(tmp_path, options))
    assert outcome.status is status
    assert (outcome.facts["load1"], outcome.facts["load5"], outcome.facts["load15"]) == (
        9.0,
        4.0,
        1.0,
    )
    assert outcome.facts["load_per_core"] == pytest.approx(9.0 / (os.cpu_count() or 1), abs=1e-3)
