"""A real single-node Slurm cluster on localhost for tests, all state in one directory.

:func:`start_cluster` writes a private munge key and a ``slurm.conf`` (from
``slurm.conf.in``: linuxproc process tracking, no task plugin, ``batch_sched_delay=0``,
private ports on 127.0.0.1), then starts ``munged``, ``slurmctld`` and
``slurmd -N localhost`` inside a PID namespace of their own whose first process is
:mod:`tests.slurm.nsinit`. Client commands (``sbatch``, ``squeue``, ``scancel``) run on
the host with ``SLURM_CONF`` pointing at the private configuration.

Tear-down (:meth:`SlurmCluster.stop`) works by PID only: it lists the namespace's
processes (the daemons and any stray ``slurmstepd`` with its job, all descendants of the
namespace's first process), asks that process to stop them, SIGKILLs it if it does not
(the kernel then kills the whole namespace), and finally checks that no process is left
in the namespace, killing any by PID. Needs root, ``unshare`` and ``setpriv``
(util-linux), and Debian's ``slurm-wlm`` and ``munge``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.pidns import ClusterError, Namespace, free_port, start_namespace, tail

HERE = Path(__file__).resolve().parent
TOOLS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "scontrol", "sinfo")
TOOLS += ("unshare", "setpriv")
FINAL_STATES = frozenset(
    {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED"}
)


def missing_requirements() -> str | None:
    """Why no cluster can be started here, or None."""
    if os.geteuid() != 0:
        return "needs root (slurmd and munged run as root)"
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return f"needs {', '.join(missing)}: install slurm-wlm and munge (scripts/system-deps.sh)"
    return None


@dataclass
class SlurmCluster:
    root: Path
    conf: Path
    ns: Namespace  # the cluster's PID namespace (daemons, slurmstepd, jobs)
    env: dict[str, str] = field(default_factory=dict)

    @property
    def state(self) -> Path:
        return self.root / "state"

    # -- client commands -----------------------------------------------------------------

    def command(self, argv: Sequence[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(argv), env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )

    def sbatch(self, script: Path, *options: str, env: Mapping[str, str] | None = None) -> str:
        done = subprocess.run(
            ["sbatch", "--parsable", *options, str(script)],
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if done.returncode != 0:
            raise ClusterError(f"sbatch failed: {done.stderr.strip()}\n{self.logs()}")
        return done.stdout.strip().split(";")[0]

    def job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job -o`` as a dict (empty if Slurm does not know the job)."""
        done = self.command(["scontrol", "show", "job", "-o", job_id])
        fields: dict[str, str] = {}
        for word in done.stdout.split():
            key, sep, value = word.partition("=")
            if sep:
                fields.setdefault(key, value)
        return fields

    def wait_job(self, job_id: str, states: frozenset[str], timeout: float) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        info: dict[str, str] = {}
        while time.monotonic() < deadline:
            info = self.job(job_id)
            if info.get("JobState") in states:
                return info
            time.sleep(0.2)
        raise AssertionError(
            f"Slurm job {job_id} not in {sorted(states)} after {timeout:.0f} s: {info}\n"
            + self.logs()
        )

    def logs(self) -> str:
        names = ("nsinit.log", "munged.log", "slurmctld.log", "slurmd.log")
        return "\n".join(tail(self.state / name) for name in names)

    # -- tear-down ------------------------------------------------------------------------

    def namespace_pids(self) -> list[int]:
        """Host PIDs of every process in the cluster's PID namespace."""
        return self.ns.pids()

    def stop(self, grace: float = 10) -> list[str]:
        """Stop everything of the cluster; returns what had to be killed the hard way."""
        return self.ns.stop(grace, stray="slurmstepd")


# -- start-up ---------------------------------------------------------------------------


def _write_config(root: Path, kill_wait: int) -> tuple[Path, dict[str, object]]:
    state = root / "state"
    for sub in ("ctld", "slurmd", "munge"):
        (state / sub).mkdir(parents=True, exist_ok=True)
    (state / "munge").chmod(0o700)
    key = state / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    values: dict[str, object] = {
        "controller": socket.gethostname().split(".")[0],
        "ctld_port": free_port(),
        "slurmd_port": free_port(),
        "munge_socket": state / "munge" / "munge.socket",
        "state": state,
        "cpus": os.cpu_count() or 1,
        "kill_wait": kill_wait,
    }
    conf = root / "slurm.conf"
    conf.write_text((HERE / "slurm.conf.in").read_text().format(**values))
    return conf, values


def _daemons(conf: Path, values: Mapping[str, object]) -> list[dict[str, object]]:
    state = Path(str(values["state"]))
    munge = state / "munge"
    munged = [
        "munged", "--foreground", "--force", f"--socket={values['munge_socket']}",
        f"--key-file={munge / 'munge.key'}", f"--pid-file={munge / 'munged.pid'}",
        f"--log-file={state / 'munged.log'}", f"--seed-file={munge / 'munged.seed'}",
    ]  # fmt: skip
    return [
        {"argv": munged, "wait_for": str(values["munge_socket"])},
        {"argv": ["slurmctld", "-D", "-f", str(conf)], "wait_for": str(state / "slurmctld.pid")},
        {"argv": ["slurmd", "-D", "-N", "localhost", "-f", str(conf)], "wait_for": None},
    ]


def _wait_ready(cluster: SlurmCluster, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if not cluster.ns.alive():
            break
        done = cluster.command(["sinfo", "-h", "-N", "-o", "%T"], timeout=10)
        last = (done.stdout + done.stderr).strip()
        if done.returncode == 0 and last.rstrip("*") in {"idle", "mixed"}:
            return
        time.sleep(0.2)
    raise ClusterError(f"Slurm did not become ready in {timeout:.0f} s ({last})\n{cluster.logs()}")


def start_cluster(root: Path, kill_wait: int = 20, timeout: float = 60) -> SlurmCluster:
    """Start the cluster under ``root``; raises :class:`ClusterError` with the reason."""
    problem = missing_requirements()
    if problem:
        raise ClusterError(problem)
    conf, values = _write_config(root, kill_wait)
    spec = root / "nsinit.json"
    state = root / "state"
    spec.write_text(
        json.dumps(
            {"log": str(state / "nsinit.log"), "grace": 3, "daemons": _daemons(conf, values)}
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "PILOT_"))}
    env["SLURM_CONF"] = str(conf)
    cluster = SlurmCluster(root, conf, start_namespace(spec, cwd=root), env)
    try:
        _wait_ready(cluster, timeout)
    except BaseException:
        cluster.stop()
        raise
    return cluster
