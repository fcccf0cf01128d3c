"""Payload isolation: bubblewrap argv, credential masking, the probe, cgroups, end to end."""

from __future__ import annotations

import itertools
import os
import shutil
from pathlib import Path

import pytest

from pilot.errors import CheckFailed
from pilot.job import isolation
from testbed.pki import build_pki, issue_proxy, proxy_pem
from tests.conftest import FAST, Stub, pilot_env, run_pilot, unavailable
from tests.payloads.support import (
    MARK_ENV,
    PAYLOADS,
    SYSTEM_PYTHON,
    nobody_command,
    nobody_dir,
    start_pilot,
)


def write_proxy(path: Path) -> Path:
    """A real (test CA) proxy file: the pilot loads and checks it before taking jobs."""
    pki = build_pki(path.parent / "pki")
    path.write_bytes(proxy_pem(issue_proxy(pki.user), [pki.user.cert]))
    path.chmod(0o600)
    return path


def needs_bwrap() -> str:
    path = shutil.which("bwrap")
    if path is None:
        unavailable("needs bwrap (bubblewrap): make system-deps installs it")
    return path


# -- argv and credentials (pure) --------------------------------------------------------


def test_bwrap_argv_masks_credentials_and_other_jobs(tmp_path: Path) -> None:
    work, job = tmp_path / "work", tmp_path / "work" / "job-7"
    secret_file = Path("/etc/os-release")  # stands for a proxy outside /tmp
    secret_dir = Path("/etc")  # stands for a token directory outside /tmp
    in_tmp = tmp_path / "x509up_u0"  # under /tmp: already hidden by the private /tmp
    in_tmp.write_text("secret")
    in_work = work / "pilot-token"  # under the work dir: already hidden by its tmpfs
    argv = isolation.bwrap_argv(
        "/usr/bin/bwrap", ("/bin/echo", "hi"), job, work, (secret_file, secret_dir, in_tmp, in_work)
    )
    pairs, triples = (
        list(itertools.pairwise(argv)),
        list(zip(argv, argv[1:], argv[2:], strict=False)),
    )
    assert ("--ro-bind", "/", "/") in triples
    assert ("--tmpfs", "/tmp") in pairs and ("--tmpfs", str(work)) in pairs
    assert ("--ro-bind", "/dev/null", str(secret_file)) in triples
    assert ("--tmpfs", str(secret_dir)) in pairs
    assert str(in_tmp) not in argv and str(in_work) not in argv
    assert ("--bind", str(job), str(job)) in triples
    assert argv.index("--bind") > argv.index(str(work))  # the job dir is bound back after
    assert ("--remount-ro", str(work)) in pairs  # and the rest of the work dir is read-only
    assert argv[-3:] == ("--", "/bin/echo", "hi")
    assert {"--unshare-user", "--unshare-pid", "--die-with-parent"} <= set(argv)


def test_apptainer_argv_contains_and_binds_the_job(tmp_path: Path) -> None:
    argv = isolation.apptainer_argv("apptainer", "/images/el9.sif", ("run.sh", "a"), tmp_path)
    assert argv[:3] == ("apptainer", "exec", "--contain")
    assert f"{tmp_path}:{tmp_path}" in argv and argv[-3:] == ("/images/el9.sif", "run.sh", "a")


# -- choosing ---------------------------------------------------------------------------


def test_none_and_missing_runtimes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert isolation.choose("none", tmp_path).runtime is isolation.Runtime.NONE
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap, no apptainer here
    auto = isolation.choose("auto", tmp_path)
    assert auto.runtime is isolation.Runtime.NONE and "bwrap not found" in auto.detail
    with pytest.raises(CheckFailed, match="isolation bwrap requested but unusable"):
        isolation.choose("bwrap", tmp_path)
    with pytest.raises(CheckFailed, match="apptainer not found"):
        isolation.choose("apptainer", tmp_path, "/images/x.sif")


def test_auto_picks_bubblewrap_when_it_works(tmp_path: Path) -> None:
    needs_bwrap()
    chosen = isolation.choose("auto", tmp_path)
    assert chosen.runtime is isolation.Runtime.BWRAP, chosen.detail
    assert list(tmp_path.iterdir()) == []  # the probe cleaned up after itself


def test_a_broken_bwrap_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "bin" / "bwrap"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:/usr/bin:/bin")
    auto = isolation.choose("auto", tmp_path / "work")
    assert auto.runtime is isolation.Runtime.NONE
    assert "No permissions to create new namespace" in auto.detail
    with pytest.raises(CheckFailed, match="No permissions"):
        isolation.choose("bwrap", tmp_path / "work")


# -- cgroups (a cgroupfs tree made of plain files) ----------------------------------------


def fake_cgroupfs(tmp_path: Path, controllers: str) -> tuple[Path, Path, Path]:
    mount = tmp_path / "cgroup"
    own = mount / "user.slice" / "pilot.scope"
    own.mkdir(parents=True)
    (own / "cgroup.controllers").write_text(controllers + "\n")
    (own / "cgroup.subtree_control").write_text("")
    (own / "cgroup.procs").write_text("")
    proc_cgroup = tmp_path / "proc-self-cgroup"
    proc_cgroup.write_text("0::/user.slice/pilot.scope\n")
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        f"24 1 0:21 / /proc rw - proc proc rw\n30 24 0:26 / {mount} rw - cgroup2 cgroup2 rw\n"
    )
    return own, proc_cgroup, mountinfo


def test_cgroup_probe_delegated_tree(tmp_path: Path) -> None:
    own, proc_cgroup, mountinfo = fake_cgroupfs(tmp_path, "cpu memory pids")
    parent = isolation.probe_cgroup(proc_cgroup, mountinfo, pid=4242)
    assert parent == isolation.CgroupParent(own)
    assert (own / "pilot" / "cgroup.procs").read_text() == "4242\n"  # pilot moved to a leaf
    assert (own / "cgroup.subtree_control").read_text() == "+memory\n"
    job = isolation.JobCgroup.create(parent, "job-1", 100)
    assert job is not None
    assert (own / "job-1" / "memory.max").read_text() == f"{100 << 20}\n"
    (own / "job-1" / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    assert job.oom_kills() == 1
    job.add(4343)
    assert job.pids() == [4343]


def test_cgroup_probe_quietly_gives_up(tmp_path: Path) -> None:
    own, proc_cgroup, mountinfo = fake_cgroupfs(tmp_path, "cpu pids")
    assert isolation.probe_cgroup(proc_cgroup, mountinfo, pid=1) is None  # no memory controller
    (own / "cgroup.controllers").write_text("memory\n")
    (own / "cgroup.subtree_control").unlink()
    (own / "cgroup.subtree_control").mkdir()  # writing it fails, like EBUSY would
    assert isolation.probe_cgroup(proc_cgroup, mountinfo, pid=1) is None
    assert (own / "cgroup.procs").read_text() == "1\n"  # moved back where it was
    assert isolation.probe_cgroup(tmp_path / "nope", mountinfo) is None


# -- end to end -------------------------------------------------------------------------


def peek_job(stub: Stub, mark: str, proxy: Path, python: str = SYSTEM_PYTHON) -> int:
    """peek.py travels in the input sandbox and runs with the system Python: inside the
    sandbox nothing under /tmp is visible but the job directory, and the checkout (and
    its virtualenv) may well sit under /tmp."""
    jdl = (
        f'Executable = "{python}"; Arguments = "peek.py {mark} {proxy}";'
        f' ExecutionEnvironment = {{"{MARK_ENV}={mark}"}}; InputSandbox = {{"peek.py"}};'
        ' StdOutput = "out"; StdError = "err"; OutputSandbox = {"out", "err"};'
    )
    (job,) = stub.submit(jdl, {"peek.py": (PAYLOADS / "peek.py").read_text()})
    return job


def check_peek_output(stub: Stub, job: int, proxy: Path, tmp: Path, mark: str) -> None:
    info = stub.client.job(job)
    assert (info["status"], info["minor_status"]) == ("Done", "Execution Complete")
    stub.client.get_output(job, tmp / "out")
    seen = (tmp / "out" / "out").read_text()
    assert f"read {proxy}: 0 bytes" in seen or f"cannot read {proxy}" in seen, seen
    assert "BEGIN" not in seen
    assert f"parent lists: ['job-{job}']" in seen  # no other job, no pilot file
    assert "cannot write outside the job directory" in seen
    assert "pids visible: 2" in seen  # its own PID namespace: bwrap's init and itself
    assert not Path(f"/tmp/peek-{mark}").exists()  # a private /tmp


def test_payload_cannot_read_the_pilots_proxy(stub: Stub, tmp_path: Path) -> None:
    needs_bwrap()
    proxy = write_proxy(tmp_path / "x509up_test")
    mark = "iso-" + os.urandom(6).hex()
    job = peek_job(stub, mark, proxy)
    env = pilot_env(X509_USER_PROXY=str(proxy))
    done = run_pilot(
        ["run", "--server", stub.url, "--isolation", "auto", *FAST], cwd=tmp_path, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "payload isolation: bwrap" in done.stderr
    check_peek_output(stub, job, proxy, tmp_path, mark)
    (pilot,) = stub.client.pilots()
    assert pilot["isolation"]["runtime"] == "bwrap"


def test_isolation_as_an_ordinary_user(stub: Stub) -> None:
    needs_bwrap()
    argv0, env = nobody_command()
    work = nobody_dir()
    try:
        proxy = write_proxy(work / "x509up_nobody")
        os.chown(proxy, os.stat(work).st_uid, -1)
        mark = "iso-" + os.urandom(6).hex()
        job = peek_job(stub, mark, proxy, SYSTEM_PYTHON)
        env["X509_USER_PROXY"] = str(proxy)
        pilot = start_pilot(stub, work, "--isolation", "bwrap", *FAST, env=env, argv0=argv0)
        code = pilot.wait(120)
        log = (work / "pilot.log").read_text()
        if code == 30 and "does not work here" in log:
            unavailable(f"needs bwrap usable by nobody here (user namespaces): {log[-500:]}")
        assert code == 0, log[-3000:]
        check_peek_output(stub, job, proxy, work, mark)
    finally:
        shutil.rmtree(work, ignore_errors=True)
