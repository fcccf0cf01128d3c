"""DIRAC payload proxies and data, proven with DIRAC's own client tools: a file uploaded
with ``dirac-dms-add-file``, a job submitted with ``dirac-wms-job-submit`` whose InputData
names it and whose OutputData names a result, our pilot (package and one-file binary) runs
it, and ``dirac-dms-lfn-replicas`` / ``dirac-dms-get-file`` find the result registered with
the payload's bytes; the payload saw a fresh proxy delegated from its owner's (uploaded by
``dirac-proxy-init``). Failure paths end with DIRAC-style minor statuses."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pilot.backends.base import MatchedJob
from pilot.backends.dirac import cscfg, data
from pilot.backends.dirac.backend import DiracBackend
from pilot.errors import NoStoredProxy
from pilot.grid import credentials
from testbed.dirac_server.fixture import DiracServer
from testbed.dirac_server.jobs import pilot_config, unique_tag, wait_for
from tests.test_binary import pilot_binary  # noqa: F401 (session fixture: builds dist/pilot)
from tests.test_dirac_pilot import run_with_config

pytestmark = [pytest.mark.system, pytest.mark.timeout(900)]

PAYLOAD = """#!/bin/sh
set -e
echo "proxy=${X509_USER_PROXY:-none} mode=$(stat -c %a "$X509_USER_PROXY")"
openssl crl2pkcs7 -nocrl -certfile "$X509_USER_PROXY" | openssl pkcs7 -print_certs > certs.pem
voms-proxy-info -file "$X509_USER_PROXY" -identity
echo "result of $(cat "$1")" > result.txt
mkdir -p res && echo digest > "res/digest-$JOBID.txt"
"""


def data_config(server: DiracServer, tmp: Path, tag: str) -> Path:
    """The pilot's configuration as a site would write it for data and payload proxies
    (the ProxyManager and the Configuration Server are in every test pilot's)."""
    conf = pilot_config(server, tmp, tag)
    assert "proxymanager" in conf.read_text() and "configuration" in conf.read_text()
    return conf


def spki(public_key: object) -> bytes:
    return public_key.public_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def add_file(server: DiracServer, tmp: Path, lfn: str, text: str) -> None:
    local = tmp / f"upload-{uuid.uuid4().hex[:6]}.txt"
    local.write_text(text)
    added = server.dirac("dms-add-file", lfn, str(local), "SE-LOCAL")
    assert added.ok and "Successfully uploaded" in added.stdout, added.stdout + added.stderr


def submit_data_job(server: DiracServer, workdir: Path, tag: str, in_lfn: str, **extra: str) -> str:
    """``dirac-wms-job-submit`` the data job; returns its id once it is Waiting."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "payload.sh").write_text(PAYLOAD)
    lines = [
        f'JobName = "{tag}";',
        'Executable = "payload.sh";',
        f'Arguments = "{Path(in_lfn).name}";',
        'InputSandbox = {"payload.sh"};',
        f'InputData = {{"LFN:{in_lfn}"}};',
        'OutputData = {"result.txt"};',
        'OutputSE = "SE-LOCAL";',
        f'OutputPath = "out-{tag}";',
        'StdOutput = "std.out";',
        'StdError = "std.err";',
        'OutputSandbox = {"std.out", "std.err", "certs.pem", "res/digest-*.txt"};',
        "CPUTime = 1000;",
        f'Tags = {{"{tag}"}};',
        *(f"{key} = {value};" for key, value in extra.items()),
    ]
    (workdir / "job.jdl").write_text("[\n" + "\n".join(lines) + "\n]\n")
    submitted = server.dirac("wms-job-submit", "job.jdl", cwd=workdir)
    assert "JobID = " in submitted.stdout, submitted.stdout + submitted.stderr
    job_id = submitted.stdout.split("JobID = ")[1].split()[0]
    wait_for(server, job_id, "Waiting", timeout=120)
    return job_id


def check_result(server: DiracServer, tmp: Path, job_id: str, tag: str, text: str) -> None:
    """The job is Done, its result registered and holding the payload's bytes, and the
    payload had a fresh delegated proxy of its owner."""
    wait_for(server, job_id, "Done")
    history = server.dirac("wms-job-logging-info", job_id).stdout
    for minor in (
        "Application Finished Successfully",
        "Output Sandbox Uploaded",
        "Output Data Uploaded",
    ):
        assert minor in history, history  # the minor statuses DIRAC's JobWrapper sends
    out_lfn = f"/testvo/user/t/testuser/out-{tag}/result.txt"
    replicas = server.dirac("dms-lfn-replicas", out_lfn)
    assert replicas.ok and "SE-LOCAL" in replicas.stdout, replicas.stdout + replicas.stderr
    fetched = tmp / "fetched"
    fetched.mkdir()
    got = server.dirac("dms-get-file", out_lfn, cwd=fetched)
    assert got.ok, got.stdout + got.stderr
    assert (fetched / "result.txt").read_text() == f"result of {text}"
    sandbox = tmp / "sandbox"
    output = server.dirac("wms-job-get-output", "-D", str(sandbox), job_id)
    assert output.ok, output.stdout + output.stderr
    # DIRAC's packing: a globbed file comes back under its base name
    assert (sandbox / job_id / f"digest-{job_id}.txt").read_text() == "digest\n"
    std_out = (sandbox / job_id / "std.out").read_text()
    assert "mode=600" in std_out and server.user_dn in std_out, std_out
    assert server.pilot_dn not in std_out, std_out
    certs = x509.load_pem_x509_certificates((sandbox / job_id / "certs.pem").read_bytes())
    chain = [c.public_bytes(serialization.Encoding.DER) for c in certs]
    # the payload's proxy is its owner's (testuser), never the pilot's (testpilot), which
    # is another DIRAC user in another group: the pilot ran with its own proxy
    identity = credentials.identity_from_peer_chain(chain, slash=True)
    assert identity == server.user_dn and identity != server.pilot_dn
    pilot = credentials.load_proxy(server.pilot_proxy)
    assert pilot.identity_slash == server.pilot_dn
    owner = credentials.load_proxy(server.proxy)
    fresh = spki(certs[0].public_key())
    assert fresh != spki(pilot.key.public_key())  # never the pilot's proxy
    assert fresh != spki(owner.key.public_key())  # nor the owner's own
    assert all(fresh != spki(c.public_key()) for c in certs[1:])  # nor the stored one's


def test_dirac_data_job_end_to_end(dirac_server: DiracServer, tmp_path: Path) -> None:
    tag = unique_tag()
    in_lfn = f"/testvo/user/t/testuser/in-{tag}.txt"
    add_file(dirac_server, tmp_path, in_lfn, f"input {tag}\n")
    job_id = submit_data_job(dirac_server, tmp_path / "submit", tag, in_lfn)
    done = run_with_config(dirac_server, data_config(dirac_server, tmp_path, tag), tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    check_result(dirac_server, tmp_path, job_id, tag, f"input {tag}\n")


def test_dirac_data_job_with_the_binary(
    dirac_server: DiracServer,
    pilot_binary: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    tag = unique_tag()
    in_lfn = f"/testvo/user/t/testuser/in-{tag}.txt"
    add_file(dirac_server, tmp_path, in_lfn, f"binary {tag}\n")
    job_id = submit_data_job(dirac_server, tmp_path / "submit", tag, in_lfn)
    conf = data_config(dirac_server, tmp_path, tag)
    done = run_with_config(dirac_server, conf, tmp_path, pilot_binary)
    assert done.returncode == 0, done.stderr[-3000:]
    check_result(dirac_server, tmp_path, job_id, tag, f"binary {tag}\n")


def test_missing_replica_fails_with_input_data_status(
    dirac_server: DiracServer, tmp_path: Path
) -> None:
    """The catalogue knows the file, the storage element lost it: Input Data Not Available."""
    tag = unique_tag()
    in_lfn = f"/testvo/user/t/testuser/lost-{tag}.txt"
    add_file(dirac_server, tmp_path, in_lfn, "soon gone\n")
    (dirac_server.state_dir / "storage" / "se" / in_lfn.lstrip("/")).unlink()
    job_id = submit_data_job(dirac_server, tmp_path / "submit", tag, in_lfn)
    done = run_with_config(dirac_server, data_config(dirac_server, tmp_path, tag), tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    line = wait_for(dirac_server, job_id, "Failed")
    assert "Input Data Not Available" in line and in_lfn in line, line


def test_output_upload_failure_fails_the_job_and_registers_nothing(
    dirac_server: DiracServer, tmp_path: Path
) -> None:
    tag = unique_tag()
    in_lfn = f"/testvo/user/t/testuser/in-{tag}.txt"
    add_file(dirac_server, tmp_path, in_lfn, "x\n")
    job_id = submit_data_job(
        dirac_server, tmp_path / "submit", tag, in_lfn, OutputSE='"SE-NOWHERE"'
    )
    done = run_with_config(dirac_server, data_config(dirac_server, tmp_path, tag), tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    line = wait_for(dirac_server, job_id, "Failed")
    assert "Failed to upload output data" in line and "SE-NOWHERE" in line, line
    replicas = dirac_server.dirac(
        "dms-lfn-replicas", f"/testvo/user/t/testuser/out-{tag}/result.txt"
    )
    assert "SE-LOCAL" not in replicas.stdout


def submit_plain_job(
    server: DiracServer, workdir: Path, tag: str, proxy: Path | None = None, **extra: str
) -> str:
    """``dirac-wms-job-submit`` (as testuser, or as the owner of ``proxy``) a job without
    data that prints its proxy's identity; returns its id once it is Waiting."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "who.sh").write_text(
        '#!/bin/sh\nvoms-proxy-info -file "${X509_USER_PROXY:-/nonexistent}" -identity'
        ' || echo "no proxy"\n'
    )
    lines = [
        f'JobName = "{tag}";',
        'Executable = "who.sh";',
        'InputSandbox = {"who.sh"};',
        'StdOutput = "std.out";',
        'StdError = "std.err";',
        'OutputSandbox = {"std.out", "std.err"};',
        "CPUTime = 1000;",
        f'Tags = {{"{tag}"}};',
        *(f"{key} = {value};" for key, value in extra.items()),
    ]
    (workdir / "job.jdl").write_text("[\n" + "\n".join(lines) + "\n]\n")
    submitted = server.dirac("wms-job-submit", "job.jdl", cwd=workdir, proxy=proxy)
    assert "JobID = " in submitted.stdout, submitted.stdout + submitted.stderr
    job_id = submitted.stdout.split("JobID = ")[1].split()[0]
    wait_for(server, job_id, "Waiting", timeout=120)
    return job_id


def test_an_owner_without_a_stored_proxy_fails_that_job_and_the_pilot_goes_on(
    dirac_server: DiracServer, tmp_path: Path
) -> None:
    """otheruser never uploaded a proxy (dirac-proxy-init -N) and their job requires one:
    the ProxyManager has nothing to delegate, that job fails with the payload proxy status,
    and the same pilot takes testuser's job next and completes it with testuser's proxy."""
    tag = unique_tag()
    refused = submit_plain_job(
        dirac_server,
        tmp_path / "other",
        tag,
        proxy=dirac_server.other_proxy,
        PayloadProxy='"Required"',
    )
    ok = submit_plain_job(dirac_server, tmp_path / "mine", tag)
    done = run_with_config(dirac_server, data_config(dirac_server, tmp_path, tag), tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    line = wait_for(dirac_server, refused, "Failed")
    assert "Failed to get payload proxy" in line and "otheruser" in line, line
    wait_for(dirac_server, ok, "Done")
    assert f"job {refused}: Failed" in done.stderr and f"job {ok}: Done" in done.stderr
    out = tmp_path / "out"
    got = dirac_server.dirac("wms-job-get-output", "-D", str(out), ok)
    assert got.ok, got.stdout + got.stderr
    seen = (out / ok / "std.out").read_text().strip()  # the proxy's subject
    assert seen.startswith(dirac_server.user_dn + "/CN="), seen


def test_proxy_manager_refusal_fails_the_job_and_the_pilot_goes_on(
    dirac_server: DiracServer, tmp_path: Path
) -> None:
    """The pilot's group (testvo_pilot_nodeleg) has GenericPilot but no delegation
    property: the ProxyManager refuses getProxy (DIRAC's authorization layer: "Unauthorized
    query"), so each job fails with the payload proxy status naming the refusal, the pilot
    does not stop at the first one but takes the next, and it ends normally. The same
    owner's jobs, with the pilot in testvo_pilot (LimitedDelegation), get their proxy: see
    the tests above."""
    tag = unique_tag()
    jobs = [submit_plain_job(dirac_server, tmp_path / f"j{n}", tag) for n in range(2)]
    conf = data_config(dirac_server, tmp_path, tag)
    done = run_with_config(dirac_server, conf, tmp_path, proxy=dirac_server.nodeleg_proxy)
    assert done.returncode == 0, done.stderr[-3000:]
    for job_id in jobs:
        line = wait_for(dirac_server, job_id, "Failed")
        assert "Failed to get payload proxy" in line and "Unauthorized query" in line, line
        assert f"job {job_id}: Failed" in done.stderr


def test_delegation_for_a_group_without_a_stored_proxy_is_no_stored_proxy(
    dirac_server: DiracServer,
) -> None:
    """In-process, with the pilots' proxy: a made-up group has no stored proxy, which is
    NoStoredProxy (runs without a proxy unless the JDL requires one), not an error; the
    owner's DN and the storage elements come from DIRAC's configuration."""
    backend = DiracBackend(
        dirac_server.settings(
            proxy_manager_url=dirac_server.urls["proxymanager"],
            configuration_url=dirac_server.urls["configuration"],
        )
    )
    _, request = credentials.new_proxy_request()
    job = MatchedJob("1", "[]", extra={"Owner": "testuser", "Group": "no_such_group"})
    with pytest.raises(NoStoredProxy):
        backend.delegate_proxy(job, request.decode(), 3600, False)
    cs = backend.config()
    assert cscfg.user_dn(cs, "testuser") == dirac_server.user_dn
    assert "SE-LOCAL" in data.storage_elements_from_cs(cs)


def test_lfns_that_could_escape_the_storage_element_are_refused() -> None:
    for bad in ("/testvo/../etc/passwd", "relative/x", "/testvo//x", "/testvo/./x", "/a/b\x00"):
        with pytest.raises(data.DataError):
            data.check_lfn(bad)
    assert data.check_lfn("LFN:/testvo/user/t/x.txt") == "/testvo/user/t/x.txt"
    assert (
        data.user_lfn("testvo", "testuser", "12345", None, "r.txt")
        == "/testvo/user/t/testuser/12/12345/r.txt"
    )
    assert data.user_lfn("vo", "al", "1", "LFN:/vo/abs", "r") == "/vo/abs/r"
    assert data.user_lfn("vo", "al", "1", "sub/dir", "r") == "/vo/user/a/al/sub/dir/r"


def test_flattened_output_sandbox_follows_dirac(tmp_path: Path) -> None:
    from pilot.job import archive, outpack

    job = tmp_path / "job"
    (job / "res" / "deep").mkdir(parents=True)
    (job / "res" / "digest-p1.txt").write_text("one")
    (job / "res" / "deep" / "f.txt").write_text("deep")
    (job / "std.out").write_text("out")
    (job / "link").symlink_to("std.out")
    out = tmp_path / "o.tar.gz"
    packed = outpack.pack_output(
        job,
        ["res/digest-*.txt", "std.out", "res/deep", "link"],
        out,
        max_bytes=1 << 20,
        flatten=True,
    )
    assert sorted(packed.included) == ["deep/f.txt", "digest-p1.txt", "std.out"]
    assert packed.skipped == ("link",)
    names = archive.safe_unpack(out, tmp_path / "u")
    assert (tmp_path / "u" / "digest-p1.txt").read_text() == "one" and names


def test_cfg_parser_reads_sections_options_and_appends() -> None:
    cfg = cscfg.parse(
        "# comment\nRegistry\n{\n  Users\n  {\n    u\n    {\n      DN = /O=X/CN=u\n"
        "      Groups = a\n      Groups += b\n    }\n  }\n}\n"
    )
    assert cscfg.user_dn(cfg, "u") == "/O=X/CN=u"
    assert cfg.get("/Registry/Users/u/Groups") == "a, b"
    with pytest.raises(cscfg.CfgError):
        cscfg.parse("A\n{\n")
