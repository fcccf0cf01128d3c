"""Jobs on the test DIRAC server through DIRAC's own client: submit, status, wait; and the
pilot's configuration and environment for that server (shared by tests and benchmarks)."""

from __future__ import annotations

import os
import re
import time
import uuid
from pathlib import Path

from testbed.dirac_server.fixture import DiracServer

JOB_ID_LINE = re.compile(r"^JobID = (\d+)$", re.MULTILINE)


def unique_tag() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


def submit(
    server: DiracServer, workdir: Path, tag: str, files: dict[str, str] | None = None
) -> str:
    """``dirac-wms-job-submit`` a JDL carrying ``tag`` (and ``files`` as input sandbox)."""
    workdir.mkdir(parents=True, exist_ok=True)
    for name, text in (files or {}).items():
        (workdir / name).write_text(text)
    sandbox = ", ".join(f'"{name}"' for name in files or {})
    lines = [
        f'JobName = "{tag}";',
        'Executable = "/bin/echo";',
        f'Arguments = "{tag}";',
        'StdOutput = "std.out";',
        'StdError = "std.err";',
        'OutputSandbox = {"std.out", "std.err"};',
        "CPUTime = 1000;",
        f'Tags = {{"{tag}"}};',
    ]
    if sandbox:
        lines.append(f"InputSandbox = {{{sandbox}}};")
    (workdir / "job.jdl").write_text("[\n" + "\n".join(lines) + "\n]\n")
    result = server.dirac("wms-job-submit", "job.jdl", cwd=workdir)
    found = JOB_ID_LINE.search(result.stdout)
    assert result.ok and found, f"submission failed: {result.stdout}\n{result.stderr}"
    return found.group(1)


def cli_status(server: DiracServer, job_id: str) -> str:
    result = server.dirac("wms-job-status", job_id)
    assert result.ok, result.stderr
    line = next((x for x in result.stdout.splitlines() if x.startswith(f"JobID={job_id} ")), "")
    assert line, result.stdout
    return line


def pilot_config(
    server: DiracServer,
    tmp: Path,
    tag: str,
    idle_timeout: float = 3,
    disable: tuple[str, ...] = ("cpu",),
) -> Path:
    conf = tmp / f"pilot-{tag}.toml"
    disabled = ", ".join(f'"{name}"' for name in disable)
    conf.write_text(
        f'site = "{server.site}"\nce = "{server.ce}"\nqueue = "{server.queue}"\n'
        f'vo = "{server.vo}"\ntags = ["{tag}"]\nrequired_tags = ["{tag}"]\n'
        f"idle_timeout = {idle_timeout}\nheartbeat_interval = 1\nsample_interval = 0.5\n"
        f"disable_check = [{disabled}]\n"
        "[dirac]\n"
        f'matcher = "{server.urls["matcher"]}"\n'
        f'jobstateupdate = "{server.urls["jobstateupdate"]}"\n'
        f'sandboxstore = "{server.urls["sandboxstore"]}"\n'
        # the pilot (testpilot) stages each job's sandboxes as its owner, with the owner's
        # proxy delegated by the ProxyManager: DIRAC serves a user's sandboxes only to them
        f'proxymanager = "{server.urls["proxymanager"]}"\n'
        f'configuration = "{server.urls["configuration"]}"\n'
    )
    return conf


def env_for(server: DiracServer, proxy: Path | None = None) -> dict[str, str]:
    """The pilot's environment for this server: its own proxy (the pilots' identity, not
    the job owner's; or ``proxy``) and CAs, no PILOT_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PILOT_")}
    own = proxy or server.pilot_proxy
    return {**env, "X509_USER_PROXY": str(own), "X509_CERT_DIR": str(server.ca_dir)}


def wait_for(server: DiracServer, job_id: str, word: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    line = ""
    while time.monotonic() < deadline:
        line = cli_status(server, job_id)
        if f"Status={word};" in line:
            return line
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} never reached {word}: {line}")
