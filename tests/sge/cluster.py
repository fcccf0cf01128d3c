"""A real single-node Grid Engine (8.1.9, Debian's packages) on localhost for tests.

:func:`start_cluster` makes a private ``SGE_ROOT`` under a fresh directory (the packaged
binaries linked in, a cell ``default`` with its own bootstrap file, Berkeley DB spool,
global configuration and host aliases), picks two free ports for ``sge_qmaster`` and
``sge_execd``, and starts both inside a PID namespace of their own whose first process is
``tests/slurm/nsinit.py`` (the same namespace init the Slurm cluster uses). Both daemons
run with :file:`loopback_bind.c` preloaded: Grid Engine 8.1.9 has no listen address
setting, and the shim turns its binds to the wildcard address into binds to 127.0.0.1.
Once the qmaster answers, the fixture adds a host group ``@allhosts``, a parallel
environment ``smp`` (2 slots, ``$pe_slots``) and a queue ``all.q`` (2 slots, ``notify``
:data:`NOTIFY` s), and waits until the execd reports its load.

Jobs are submitted as user ``nobody``: root's jobs lose ``TMPDIR`` and ``LD_*`` and get
root's login profile, which is not what a pilot meets on a site. The daemons' own
environment is empty but for ``PATH``, ``SGE_*`` and the preload, so that jobs inherit
nothing of the test process.

Tear-down (:meth:`GridEngine.stop`) works by PID only, as for Slurm: ``qdel -f`` of every
job, then SIGTERM to the namespace's first process (which stops the daemons, the
shepherds and the jobs, SIGKILL after a grace period), SIGKILL of it if it does not go,
and a final check that nothing is left in the namespace. Needs root, ``unshare``,
``setpriv`` and ``runuser`` (util-linux), a C compiler, and Debian's
``gridengine-master``, ``gridengine-exec`` and ``gridengine-client``.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.pidns import ClusterError, Namespace, free_port, start_namespace, tail

HERE = Path(__file__).resolve().parent
PACKAGED = Path("/usr/lib/gridengine")  # Debian's binaries (qmaster, execd, clients, utils)
PACKAGED_UTIL = Path("/usr/share/gridengine/util")
TOOLS = ("sge_qmaster", "sge_execd", "qsub", "qstat", "qdel", "qconf", "qhost", "qacct")
TOOLS += ("unshare", "setpriv", "runuser", "cc")
ADMIN_USER = "sgeadmin"  # made by Debian's gridengine-common
JOB_USER = "nobody"
SLOTS = 2
NOTIFY = 60  # the queue's notify time: SIGUSR2 -> SIGKILL delay for qsub -notify jobs


def missing_requirements() -> str | None:
    """Why no Grid Engine can be started here, or None.

    The daemons listen on 127.0.0.1 only and every client reaches the qmaster by the host
    name, so the host name must resolve to a loopback address (as on Debian by default)."""
    if os.geteuid() != 0:
        return "needs root (sge_execd runs jobs as their owner)"
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if not (PACKAGED / "spoolinit").exists():
        missing.append(str(PACKAGED / "spoolinit"))
    if missing:
        return (
            f"needs {', '.join(missing)}: install gridengine-master, gridengine-exec, "
            "gridengine-client and gcc (scripts/system-deps.sh)"
        )
    host = socket.gethostname()
    try:
        address = socket.gethostbyname(host)
    except OSError as exc:
        return f"needs the host name {host} to resolve ({exc})"
    if not address.startswith("127."):
        return f"needs the host name {host} to resolve to a loopback address, not {address}"
    for user in (ADMIN_USER, JOB_USER):
        try:
            pwd.getpwnam(user)
        except KeyError:
            return f"needs the user {user} (made by the gridengine-common package)"
    return None


@dataclass
class GridEngine:
    root: Path  # the private SGE_ROOT (and everything else of the cluster)
    ns: Namespace  # the cluster's PID namespace (daemons, shepherds, jobs)
    env: dict[str, str] = field(default_factory=dict)  # clients' environment

    @property
    def host(self) -> str:
        return socket.gethostname()

    @property
    def job_env(self) -> str:
        """``qsub -v`` value: what a job needs to reach this cluster with its own qstat."""
        return ",".join(f"{k}={self.env[k]}" for k in ("SGE_QMASTER_PORT", "SGE_EXECD_PORT"))

    # -- client commands -----------------------------------------------------------------

    def command(
        self, argv: Sequence[str], timeout: float = 30, user: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        prefix = ["runuser", "-u", user, "--"] if user else []
        return subprocess.run(
            [*prefix, *argv],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd="/",
        )

    def qconf(self, *args: str) -> str:
        done = self.command(["qconf", *args])
        if done.returncode != 0:
            raise ClusterError(f"qconf {' '.join(args)}: {(done.stderr or done.stdout).strip()}")
        return done.stdout

    def qconf_file(self, option: str, text: str) -> None:
        path = self.root / "conf" / f"{option.lstrip('-')}-{time.monotonic_ns()}"
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
        self.qconf(option, str(path))

    def qsub(self, script: Path, *options: str, user: str = JOB_USER) -> str:
        """Submit ``script`` as ``user``; returns the job id."""
        argv = ["qsub", "-terse", "-v", self.job_env, *options, str(script)]
        done = self.command(argv, user=user)
        if done.returncode != 0:
            raise ClusterError(f"qsub failed: {(done.stderr or done.stdout).strip()}")
        return done.stdout.strip().splitlines()[-1].split(".")[0]

    def running(self, job_id: str) -> bool:
        """Whether the job is known to the qmaster and running (state ``r`` or ``t``)."""
        done = self.command(["qstat", "-u", "*", "-s", "rs"])
        for line in done.stdout.splitlines()[2:]:
            fields = line.split()
            if fields and fields[0] == job_id:
                return True
        return False

    def exists(self, job_id: str) -> bool:
        return self.command(["qstat", "-j", job_id]).returncode == 0

    def accounting(self, job_id: str, timeout: float = 30) -> dict[str, str]:
        """``qacct -j`` of a finished job (its record is written shortly after the end)."""
        deadline = time.monotonic() + timeout
        while True:
            done = self.command(["qacct", "-j", job_id])
            if done.returncode == 0 and "exit_status" in done.stdout:
                pairs = (line.split(None, 1) for line in done.stdout.splitlines())
                return {p[0]: p[1].strip() for p in pairs if len(p) == 2}
            if time.monotonic() > deadline:
                why = f"no accounting for job {job_id}: {done.stderr}"
                raise AssertionError(f"{why}\n{self.logs()}")
            time.sleep(0.5)

    def wait_gone(self, job_id: str, timeout: float) -> float:
        """Wait until the job has left the qmaster; returns when (time.monotonic())."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.exists(job_id):
                return time.monotonic()
            time.sleep(0.25)
        why = f"Grid Engine job {job_id} still there after {timeout:.0f} s"
        raise AssertionError(f"{why}\n{self.logs()}")

    def logs(self) -> str:
        spool = self.root / "spool"
        paths = [self.root / "nsinit.log", spool / "qmaster" / "messages"]
        paths += sorted((spool / "execd").glob("*/messages"))
        return "\n".join(tail(p) for p in paths)

    # -- tear-down ------------------------------------------------------------------------

    def namespace_pids(self) -> list[int]:
        """Host PIDs of every process in the cluster's PID namespace."""
        return self.ns.pids()

    def stop(self, grace: float = 15) -> list[str]:
        """Stop everything of the cluster; returns what had to be killed the hard way."""
        with contextlib.suppress(subprocess.TimeoutExpired, OSError):
            self.command(["qdel", "-f", "-u", "*"], timeout=10)
        return self.ns.stop(grace, stray="sge_shepherd")


# -- start-up ---------------------------------------------------------------------------

BOOTSTRAP = """\
admin_user              {admin}
default_domain          none
ignore_fqdn             false
spooling_method         berkeleydb
spooling_lib            libspoolb
spooling_params         {spooldb}
binary_path             {bin}
qmaster_spool_dir       {qmaster_spool}
security_mode           none
listener_threads        2
worker_threads          2
scheduler_threads       1
"""

# The packaged default configuration, changed where a one-node test cluster needs it:
# jobs start from their script's #! line, load reports come often, jobs inherit nothing
# from the execd's environment, accounting records are written at once.
GLOBAL_CONFIG_CHANGES = {
    "execd_spool_dir": "{execd_spool}",
    "mailer": "/bin/true",
    "shell_start_mode": "unix_behavior",
    "load_report_time": "00:00:05",
    "execd_params": "INHERIT_ENV=FALSE",
    "reporting_params": "accounting=true reporting=false flush_time=00:00:01 joblog=false "
    "sharelog=00:00:00 accounting_flush_time=00:00:00",
}

SCHEDULER_CHANGES = {"schedule_interval": "0:0:1", "flush_submit_sec": "1", "flush_finish_sec": "1"}

PE_SMP = f"""\
pe_name            smp
slots              {SLOTS}
user_lists         NONE
xuser_lists        NONE
start_proc_args    NONE
stop_proc_args     NONE
allocation_rule    $pe_slots
control_slaves     TRUE
job_is_first_task  TRUE
urgency_slots      min
accounting_summary FALSE
qsort_args         NONE
"""

LIMITS = ("rt", "cpu", "fsize", "data", "stack", "core", "rss", "vmem")
QUEUE = {  # qconf -Aq wants every attribute
    "qname": "all.q",
    "hostlist": "@allhosts",
    "seq_no": "0",
    "load_thresholds": "NONE",
    "suspend_thresholds": "NONE",
    "nsuspend": "1",
    "suspend_interval": "00:05:00",
    "priority": "0",
    "min_cpu_interval": "00:05:00",
    "processors": "UNDEFINED",
    "qtype": "BATCH INTERACTIVE",
    "ckpt_list": "NONE",
    "pe_list": "smp",
    "rerun": "FALSE",
    "slots": str(SLOTS),
    "tmpdir": "/tmp",
    "shell": "/bin/sh",
    "prolog": "NONE",
    "epilog": "NONE",
    "shell_start_mode": "unix_behavior",
    "starter_method": "NONE",
    "suspend_method": "NONE",
    "resume_method": "NONE",
    "terminate_method": "NONE",
    "notify": f"00:00:{NOTIFY:02d}",
    "owner_list": "NONE",
    "user_lists": "NONE",
    "xuser_lists": "NONE",
    "subordinate_list": "NONE",
    "complex_values": "NONE",
    "projects": "NONE",
    "xprojects": "NONE",
    "calendar": "NONE",
    "initial_state": "default",
    **{f"{kind}_{limit}": "INFINITY" for limit in LIMITS for kind in ("s", "h")},
}


def _replace_values(text: str, changes: Mapping[str, str]) -> str:
    """``name value`` configuration text with the given names' values replaced."""
    lines, seen = [], set()
    for line in text.splitlines():
        name = line.split(None, 1)[0] if line.strip() and not line.startswith("#") else ""
        if name in changes:
            line, seen = f"{name:<24}{changes[name]}", seen | {name}
        lines.append(line)
    lines += [f"{name:<24}{value}" for name, value in changes.items() if name not in seen]
    return "\n".join(lines) + "\n"


def _make_root(root: Path) -> dict[str, str]:
    """The private SGE_ROOT: links to the packaged binaries, the cell's common files."""
    root.chmod(0o755)  # jobs (run as nobody) read the cell's files
    for name in ("bin", "utilbin", "lib"):
        (root / name).mkdir()
        (root / name / "lx-amd64").symlink_to(PACKAGED)
    (root / "util").symlink_to(PACKAGED_UTIL)
    common = root / "default" / "common"
    common.mkdir(parents=True)
    spool = root / "spool"
    paths = {
        "spooldb": str(spool / "spooldb"),
        "qmaster_spool": str(spool / "qmaster"),
        "execd_spool": str(spool / "execd"),
    }
    for path in paths.values():
        Path(path).mkdir(parents=True)
    (spool / "qmaster" / "job_scripts").mkdir()
    host = socket.gethostname()
    (common / "bootstrap").write_text(BOOTSTRAP.format(admin=ADMIN_USER, bin="/usr/sbin", **paths))
    (common / "act_qmaster").write_text(host + "\n")
    # the host name resolves to 127.0.0.1, which resolves back to "localhost"
    (common / "host_aliases").write_text(f"{host} localhost\n")
    packaged = Path("/usr/share/gridengine/default-configuration").read_text()
    changes = {k: v.format(**paths) for k, v in GLOBAL_CONFIG_CHANGES.items()}
    (root / "global.conf").write_text(_replace_values(packaged, changes))
    return paths


def _init_spool(root: Path, env: Mapping[str, str], paths: Mapping[str, str]) -> None:
    """What Debian's init_cluster does, for the private cell."""
    resources = PACKAGED_UTIL / "resources"
    steps = [
        [str(PACKAGED / "spoolinit"), "berkeleydb", "libspoolb", paths["spooldb"], "init"],
        [str(PACKAGED / "spooldefaults"), "configuration", str(root / "global.conf")],
        [str(PACKAGED / "spooldefaults"), "complexes", str(resources / "centry")],
        [str(PACKAGED / "spooldefaults"), "usersets", str(resources / "usersets")],
        [str(PACKAGED / "spooldefaults"), "managers", ADMIN_USER, "root"],
    ]
    for argv in steps:
        done = subprocess.run(argv, env=dict(env), capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise ClusterError(f"{' '.join(argv)} failed: {(done.stderr or done.stdout).strip()}")
    admin = pwd.getpwnam(ADMIN_USER)
    for top in (root / "spool", root / "default"):
        for path in (top, *top.rglob("*")):
            os.chown(path, admin.pw_uid, admin.pw_gid, follow_symlinks=False)


def _build_shim(root: Path) -> Path:
    shim = root / "loopback_bind.so"
    done = subprocess.run(
        ["cc", "-shared", "-fPIC", "-O2", "-o", str(shim), str(HERE / "loopback_bind.c"), "-ldl"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0:
        raise ClusterError(f"cannot build the loopback bind shim: {done.stderr.strip()}")
    return shim


def _wait(cluster: GridEngine, what: str, argv: Sequence[str], ok: object, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if not cluster.ns.alive():
            break
        done = cluster.command(argv, timeout=10)
        last = (done.stdout + done.stderr).strip()
        if done.returncode == 0 and ok(done.stdout):  # type: ignore[operator]
            return done.stdout
        time.sleep(0.25)
    raise ClusterError(f"{what} not ready in {timeout:.0f} s ({last[-500:]})\n{cluster.logs()}")


def _configure(cluster: GridEngine) -> None:
    host = cluster.host
    cluster.qconf_file("-Msconf", _replace_values(cluster.qconf("-ssconf"), SCHEDULER_CHANGES))
    cluster.qconf("-as", host)
    cluster.qconf_file("-Ahgrp", f"group_name @allhosts\nhostlist {host}\n")
    cluster.qconf_file("-Ap", PE_SMP)
    cluster.qconf_file("-Aq", _replace_values("", QUEUE))


def _host_ready(text: str) -> bool:
    """``qhost`` lists the execution host with its CPU count (its first load report)."""
    for line in text.splitlines()[3:]:
        fields = line.split()
        if len(fields) > 2 and fields[2].isdigit():
            return True
    return False


def start_cluster(root: Path | None = None, timeout: float = 90) -> GridEngine:
    """Start the cluster under a new directory; raises :class:`ClusterError` with the reason."""
    problem = missing_requirements()
    if problem:
        raise ClusterError(problem)
    root = root or Path(tempfile.mkdtemp(prefix="pilot-sge-", dir="/tmp"))
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "SGE_ROOT": str(root),
        "SGE_CELL": "default",
        "SGE_QMASTER_PORT": str(free_port()),
        "SGE_EXECD_PORT": str(free_port()),
        "LANG": "C",
    }
    paths = _make_root(root)
    _init_spool(root, env, paths)
    shim = _build_shim(root)
    daemon_env = {**env, "LD_PRELOAD": str(shim)}
    qmaster_pid = Path(paths["qmaster_spool"]) / "qmaster.pid"
    spec = root / "nsinit.json"
    spec.write_text(
        json.dumps(
            {
                "log": str(root / "nsinit.log"),
                "grace": 5,
                "daemons": [
                    {"argv": ["/usr/sbin/sge_qmaster"], "wait_for": str(qmaster_pid)},
                    {"argv": ["/usr/sbin/sge_execd"], "wait_for": None},
                ],
            }
        )
    )
    cluster = GridEngine(root, start_namespace(spec, cwd=root, env=daemon_env), env)
    try:
        _wait(cluster, "sge_qmaster", ["qconf", "-sh"], lambda out: bool(out.strip()), timeout)
        _configure(cluster)
        _wait(cluster, "sge_execd", ["qhost"], _host_ready, timeout)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _main() -> int:
    """``python -m tests.sge.cluster``: start a cluster, print how to use it, stop on Enter."""
    cluster = start_cluster()
    print(f"SGE_ROOT={cluster.root}", *(f"{k}={v}" for k, v in cluster.env.items()), sep="\n")
    with contextlib.suppress(EOFError, KeyboardInterrupt):
        input("running; press Enter to stop\n")
    print("stopped", cluster.stop())
    shutil.rmtree(cluster.root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
