"""The payload's own bearer token (stub backend): minted per job with the job token,
given as ``BEARER_TOKEN_FILE`` (0600, in the job directory), good for the owner's
catalogue files and the job's own status only, revoked when the job ends."""

from __future__ import annotations

import hashlib
import secrets as random
import sqlite3
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from pilot.backends.base import MatchedJob
from pilot.errors import CredentialError, ServerError
from pilot.job import bearer
from server_stub.app import AuthPolicy
from server_stub.userclient import UserClient
from testbed.pki import Pki, pki_fixture  # noqa: F401
from tests.conftest import BIN, FAST, Stub, run_pilot, secret, start_stub
from tests.tls import https_stub
from tests.tls import tls_pilot_env as _env

OWNER_DN = "/O=DIRACTest/OU=users/CN=testuser"
PILOT_TOKEN = secret("pilot-token-for-payload-token-tests-" + "p" * 20)
USER_TOKEN = secret("user-token-for-payload-token-tests-" + "u" * 20)

# The payload uses its token with nothing but Python's standard library: it stores a file
# in its owner's catalogue and reads it back, then tries what it must not do. Each line
# of its output is "what=HTTP status" (the token itself is never printed).
PAYLOAD = r"""
import hashlib, json, os, ssl, stat, sys, urllib.request, urllib.error
url, other_job, own_job = sys.argv[1], sys.argv[2], os.environ["PILOT_JOB_ID"]
path = os.environ.get("BEARER_TOKEN_FILE")
print("file=" + str(path))
print("pilot_token=" + ("set" if "BEARER_TOKEN" in os.environ else "unset"))
if not path:
    sys.exit(0)
print("mode=%o" % stat.S_IMODE(os.stat(path).st_mode))
token = open(path).read().strip()
open("tok.txt", "w").write(token)  # for the test: is it dead once the job has ended?
ctx = ssl.create_default_context(cafile=os.environ["X509_CERT_FILE"])
def call(what, method, route, body=None, raw=None):
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(url + route, data=data, method=method)
    req.add_header("Authorization", "Bearer " + token)
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=30) as answer:
            print("%s=%d" % (what, answer.status))
            return answer.read()
    except urllib.error.HTTPError as exc:
        print("%s=%d %s" % (what, exc.code, json.loads(exc.read()).get("detail", "")))
content = b"the payload's result\n"
sha = hashlib.sha256(content).hexdigest()
call("put_content", "PUT", "/api/sandboxes/" + sha, raw=content)
call("put_file", "PUT", "/api/files/LFN:/owner/result.txt", {"sha256": sha, "size": len(content)})
entry = json.loads(call("get_file", "GET", "/api/files/LFN:/owner/result.txt"))
back = call("get_content", "GET", "/api/sandboxes/" + entry["sha256"])
print("same=" + str(back == content))
call("other_file", "GET", "/api/files/LFN:/other/secret.txt")
call("other_content", "GET", "/api/sandboxes/" + sys.argv[3])
call("overwrite_other", "PUT", "/api/files/LFN:/other/secret.txt", {"sha256": sha, "size": 1})
call("own_status", "GET", "/api/jobs/" + own_job)
call("other_status", "GET", "/api/jobs/" + other_job)
call("kill_own", "POST", "/api/jobs/" + own_job + "/kill")
call("submit", "POST", "/api/jobs/jdl", ["Executable = \"/bin/true\";"])
# pilot-stub finds the token by WLCG discovery (BEARER_TOKEN_FILE), nothing given
import subprocess
cli = [sys.argv[4] + "/pilot-stub", "--server", url, "--ca-file", os.environ["X509_CERT_FILE"]]
got = subprocess.run(
    cli + ["get-file", "LFN:/owner/result.txt", "--dir", "fetched"], capture_output=True, text=True
)
if got.returncode:
    print("cli_get=%d %s" % (got.returncode, got.stderr.strip().replace("\n", " ")))
else:
    print("cli_get=0 %s" % (open("fetched/result.txt", "rb").read() == content))
"""


@pytest.fixture
def token_stub(tmp_path: Path, pki: Pki) -> Iterator[Stub]:
    """An HTTPS stub closed by tokens: the user connects with a proxy (its DN owns the
    jobs), the pilot with a pilot token, another user with only the user token."""
    auth = AuthPolicy(frozenset({PILOT_TOKEN}), frozenset({USER_TOKEN}))
    stub = https_stub(tmp_path / "stub", pki, require_cert=False, auth=auth)
    yield stub
    stub.client.close()
    stub.server.stop()


def _other_user(stub: Stub, pki: Pki) -> UserClient:
    from pilot.grid import credentials

    return UserClient(
        stub.url, verify=credentials.ssl_context(None, ca_file=pki.ca_file), bearer=USER_TOKEN
    )


def _status(stub: Stub, pki: Pki, route: str, token: str) -> int:
    from pilot.grid import credentials

    ctx = credentials.ssl_context(None, ca_file=pki.ca_file)
    with httpx.Client(verify=ctx) as client:
        return client.get(stub.url + route, headers=_bearer(token)).status_code


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_payload_uses_its_token_for_its_owners_files_only(
    token_stub: Stub, pki: Pki, tmp_path: Path
) -> None:
    other = tmp_path / "secret.txt"
    other.write_text("not yours\n")
    with _other_user(token_stub, pki) as someone:
        other_sha = someone.put_file("LFN:/other/secret.txt", other)
        (other_job,) = someone.submit('Executable = "/bin/true";')
    assert token_stub.client.job(other_job)["owner"] == "user-token"
    (job,) = token_stub.submit(
        f'Executable = "{sys.executable}"; WallTime = 600;'
        f' Arguments = "payload.py {token_stub.url} {other_job} {other_sha} {BIN}";'
        ' InputSandbox = {"payload.py"}; StdOutput = "out.txt";'
        ' OutputSandbox = {"out.txt", "tok.txt"};',
        {"payload.py": PAYLOAD},
    )
    assert token_stub.client.job(job)["owner"] == OWNER_DN
    env = _env(pki, BEARER_TOKEN=PILOT_TOKEN)
    work = tmp_path / "w"
    done = run_pilot(
        ["run", "--server", token_stub.url, "--work-dir", str(work), *FAST],
        cwd=tmp_path,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert token_stub.status(job) == "Done", token_stub.client.logging_info(job)
    token_stub.client.get_output(job, tmp_path / "o")
    out = (tmp_path / "o" / "out.txt").read_text()
    token = secret((tmp_path / "o" / "tok.txt").read_text().strip())
    lines = dict(line.split("=", 1) for line in out.splitlines())
    assert lines["file"] == f"{work}/job-{job}/{bearer.TOKEN_FILE}", out
    assert lines["pilot_token"] == "unset", out  # never the pilot's own
    assert lines["mode"] == "600", out
    for what in ("put_content", "put_file", "get_file", "get_content"):
        assert lines[what].startswith("201") or lines[what] == "200", (what, out)
    assert lines["same"] == "True", out
    assert lines["cli_get"] == "0 True", out
    assert lines["own_status"] == "200", out
    for what in ("other_file", "other_content", "overwrite_other", "other_status"):
        assert lines[what].startswith("403"), (what, out)
    assert lines["kill_own"].startswith("403 a payload token grants only"), out
    assert lines["submit"].startswith("403 a payload token grants only"), out
    # the file is the owner's in the catalogue; the other user's is untouched
    assert token_stub.server.store.file("LFN:/owner/result.txt")["owner"] == OWNER_DN
    assert token_stub.server.store.file("LFN:/other/secret.txt")["sha256"] == other_sha
    # dead once the job has ended; the file is gone from the job directory
    assert _status(token_stub, pki, "/api/files/LFN:/owner/result.txt", token) == 401
    assert not any(work.rglob(bearer.TOKEN_FILE))
    assert "payload token" in done.stderr and token not in done.stderr + done.stdout


def test_payload_reads_its_own_status_and_its_output_data_is_the_owners(
    token_stub: Stub, pki: Pki, tmp_path: Path
) -> None:
    script = (
        "import json, os, ssl, urllib.request, sys\n"
        "req = urllib.request.Request(sys.argv[1] + '/api/jobs/' + os.environ['PILOT_JOB_ID'])\n"
        "token = open(os.environ['BEARER_TOKEN_FILE']).read().strip()\n"
        "req.add_header('Authorization', 'Bearer ' + token)\n"
        "ctx = ssl.create_default_context(cafile=os.environ['X509_CERT_FILE'])\n"
        "print(json.load(urllib.request.urlopen(req, context=ctx, timeout=30))['status'])\n"
    )
    (job,) = token_stub.submit(
        f'Executable = "{sys.executable}"; Arguments = "s.py {token_stub.url}";'
        ' InputSandbox = {"s.py"}; StdOutput = "out.txt"; OutputSandbox = {"out.txt"};'
        ' OutputData = {"out.txt"}; OutputPath = "/owner/data";',
        {"s.py": script},
    )
    env = _env(pki, BEARER_TOKEN=PILOT_TOKEN)
    done = run_pilot(["run", "--server", token_stub.url, *FAST], cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    token_stub.client.get_output(job, tmp_path / "o")
    assert (tmp_path / "o" / "out.txt").read_text().strip() == "Running"
    # the pilot stored its OutputData with the job token: the file is the owner's
    assert token_stub.server.store.file("LFN:/owner/data/out.txt")["owner"] == OWNER_DN


@pytest.mark.parametrize("mode", ["bwrap", "none"])
def test_other_jobs_cannot_read_a_payload_token_under_isolation(
    token_stub: Stub, pki: Pki, tmp_path: Path, mode: str
) -> None:
    """Two jobs at once: under bubblewrap each sees its own token file, not its
    neighbour's (without isolation it does: the masking is the isolation's)."""
    from tests.test_isolation import needs_bwrap

    needs_bwrap()
    script = (
        "#!/bin/sh\n"
        'test -r "$BEARER_TOKEN_FILE" && echo own\n'
        'sleep "$1"\n'
        'me=$(basename "$PILOT_JOB_DIR")\n'
        'for d in "$PILOT_JOB_DIR"/../job-*; do\n'
        '  [ "$(basename "$d")" = "$me" ] && continue\n'
        '  test -r "$d/.bearer-token" && echo "neighbour $d"\n'
        "done\n"
        'sleep "$2"\n'
    )
    peek = (
        'Executable = "peek.sh"; InputSandbox = {"peek.sh"}; Arguments = "%s";'
        ' StdOutput = "out.txt"; OutputSandbox = {"out.txt"};'
    )
    first = token_stub.submit(peek % "0 8", {"peek.sh": script})[0]
    second = token_stub.submit(peek % "2 0", {"peek.sh": script})[0]
    env = _env(pki, BEARER_TOKEN=PILOT_TOKEN)
    argv = ["run", "--server", token_stub.url, "--isolation", mode, "--cores", "2"]
    done = run_pilot([*argv, *FAST], cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    outs = {}
    for job in (first, second):
        token_stub.client.get_output(job, tmp_path / f"o{job}")
        outs[job] = (tmp_path / f"o{job}" / "out.txt").read_text()
        assert "own" in outs[job], outs[job]
    assert ("neighbour" in outs[second]) == (mode == "none"), outs[second]


def test_a_job_without_an_owner_runs_without_a_token(stub: Stub, tmp_path: Path) -> None:
    """An open stub: jobs have no owner identity, the match says so and the pilot asks
    for no token; the payload has no BEARER_TOKEN_FILE, even when the JDL names one."""
    (job,) = stub.submit(
        'Executable = "/bin/sh"; Arguments = "-c \'echo file=${BEARER_TOKEN_FILE:-none}\'";'
        ' ExecutionEnvironment = {"BEARER_TOKEN_FILE=/tmp/x", "BEARER_TOKEN=abc"};'
        ' StdOutput = "out.txt"; OutputSandbox = {"out.txt"};'
    )
    assert stub.client.job(job)["owner"] is None
    done = run_pilot(["run", "--server", stub.url, *FAST], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert stub.status(job) == "Done"
    stub.client.get_output(job, tmp_path / "o")
    assert (tmp_path / "o" / "out.txt").read_text().strip() == "file=none"
    assert f"job {job}: runs without a payload token: no owner" in done.stderr
    with sqlite3.connect(stub.tmp / "stub.db") as conn:
        assert conn.execute("SELECT count(*) FROM payload_tokens").fetchone() == (0,)


# -- the stub's side, over HTTP: minting, scope, expiry, revocation ------------------------


@pytest.fixture
def open_stub(tmp_path: Path) -> Iterator[Stub]:
    handle = start_stub(tmp_path / "stub")
    yield handle
    handle.client.close()
    handle.server.stop()


class Api:
    """Raw calls to an open stub, as a user named by ``X-User`` and as a pilot."""

    def __init__(self, stub: Stub) -> None:
        self.stub = stub
        self.http = httpx.Client(base_url=stub.url, timeout=30)

    def submit(self, user: str | None) -> int:
        headers = {"X-User": user} if user else {}
        answer = self.http.post(
            "/api/jobs/jdl", json=['Executable = "/bin/true";'], headers=headers
        )
        return int(answer.json()[0]["JobID"])

    def match(self) -> tuple[int, str]:
        answer = self.http.post("/api/jobs/match", json={"pilot": "p", "resources": {}})
        body = answer.json()
        return int(body["job_id"]), str(body["token"])

    def mint(self, job: int, job_token: str, key: str, lifetime: float = 600) -> httpx.Response:
        return self.http.post(
            f"/api/jobs/{job}/bearer-token",
            json={"secret": key, "lifetime": lifetime},
            headers={"X-Job-Token": job_token},
        )

    def put_file(self, lfn: str, content: bytes, headers: dict[str, str]) -> httpx.Response:
        sha = hashlib.sha256(content).hexdigest()
        self.http.put(f"/api/sandboxes/{sha}", content=content, headers=headers)
        return self.http.put(f"/api/files/{lfn}", json={"sha256": sha, "size": 1}, headers=headers)

    def final(self, job: int, job_token: str, status: str = "Done") -> None:
        answer = self.http.patch(
            "/api/jobs/status",
            json={str(job): {str(time.time()): {"Status": status, "MinorStatus": "x"}}},
            headers={"X-Job-Token": job_token},
        )
        assert answer.status_code == 200, answer.text


@pytest.fixture
def api(open_stub: Stub) -> Iterator[Api]:
    handle = Api(open_stub)
    yield handle
    handle.http.close()


def _minted(api: Api, user: str | None = "alice") -> tuple[int, str, str, str]:
    job = api.submit(user)
    jid, job_token = api.match()
    assert jid == job
    key = random.token_urlsafe(32)
    answer = api.mint(job, job_token, key)
    assert answer.status_code == 200, answer.text
    return job, job_token, key, secret(str(answer.json()["token"]))


def test_a_token_is_bound_to_its_job_and_owner(api: Api) -> None:
    job, job_token, key, token = _minted(api)
    assert token.startswith("pjt.")
    # only its hash is stored
    db = api.stub.tmp / "stub.db"
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT token_hash, job_id, owner FROM payload_tokens").fetchall()
    assert rows == [(hashlib.sha256(token.encode()).hexdigest(), job, "alice")]
    assert token.encode() not in db.read_bytes()
    # a retry (answer lost) or a renewal: the same token, one row
    again = api.mint(job, job_token, key)
    assert again.json()["token"] == token and again.json()["expires"] >= time.time() + 590
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM payload_tokens").fetchone() == (1,)
    # another job's token cannot mint for this job; a bad secret is refused
    assert api.mint(job, "not-the-job-token", key).status_code == 403
    assert api.mint(job, job_token, "short").status_code == 400
    assert api.mint(job, job_token, key, lifetime=1).status_code == 400


def test_nonsense_mint_requests_get_one_line_400s(api: Api) -> None:
    """Lifetimes that are no number of seconds (NaN, negative, a bool, a string) and a
    secret that is no string are refused with one line; the job's token still mints."""
    job = api.submit("alice")
    jid, job_token = api.match()
    key = random.token_urlsafe(32)
    nan = api.http.post(  # NaN as Python's json writes it (httpx refuses to)
        f"/api/jobs/{job}/bearer-token",
        content=f'{{"secret": "{key}", "lifetime": NaN}}',
        headers={"X-Job-Token": job_token, "Content-Type": "application/json"},
    )
    for lifetime, answer in [
        ("NaN", nan),
        *((v, api.mint(job, job_token, key, lifetime=v)) for v in (-600, True, "600", None)),  # type: ignore[arg-type]
    ]:
        assert answer.status_code == 400, (lifetime, answer.text)
        assert "lifetime must be a number of seconds" in answer.json()["detail"], answer.text
    for bad_secret in (None, 12345, ["x" * 40], "x" * 129):
        answer = api.mint(job, job_token, bad_secret)  # type: ignore[arg-type]
        assert answer.status_code == 400 and "secret must be" in answer.json()["detail"]
    assert api.mint(jid, job_token, key).status_code == 200


def test_what_a_token_opens_and_what_it_does_not(api: Api) -> None:
    job, _, _, token = _minted(api)
    other_job = api.submit("bob")
    assert api.put_file("LFN:/bob/f", b"bob's", {"X-User": "bob"}).status_code == 200
    auth = _bearer(token)
    assert api.put_file("LFN:/alice/f", b"alice's", auth).status_code == 200
    assert api.http.get("/api/files/LFN:/alice/f", headers=auth).json()["owner"] == "alice"
    sha = hashlib.sha256(b"alice's").hexdigest()
    assert api.http.get(f"/api/sandboxes/{sha}", headers=auth).content == b"alice's"
    assert api.http.get(f"/api/jobs/{job}", headers=auth).json()["status"] == "Matched"
    bob_sha = hashlib.sha256(b"bob's").hexdigest()
    refused = {
        "other's file": api.http.get("/api/files/LFN:/bob/f", headers=auth),
        "other's content": api.http.get(f"/api/sandboxes/{bob_sha}", headers=auth),
        "overwrite other's": api.put_file("LFN:/bob/f", b"mine now", auth),
        "other job": api.http.get(f"/api/jobs/{other_job}", headers=auth),
        "kill": api.http.post(f"/api/jobs/{job}/kill", headers=auth),
        "delete": api.http.delete(f"/api/jobs/{job}", headers=auth),
        "submit": api.http.post("/api/jobs/jdl", json=['Executable = "x";'], headers=auth),
        "list": api.http.get("/api/jobs", headers=auth),
        "match": api.http.post("/api/jobs/match", json={"resources": {}}, headers=auth),
        "logging": api.http.get(f"/api/jobs/{job}/logging", headers=auth),
        "proxy": api.http.get("/api/proxies", headers=auth),
    }
    for what, answer in refused.items():
        assert answer.status_code == 403, (what, answer.text)
        assert len(answer.json()["detail"].splitlines()) == 1
    assert api.stub.server.store.file("LFN:/bob/f")["owner"] == "bob"
    assert api.stub.status(job) == "Matched"  # the kill did nothing


def test_a_token_dies_with_its_job(api: Api) -> None:
    for end in ("Done", "Failed", "kill", "delete", "reschedule", "stalled"):
        job, job_token, _, token = _minted(api)
        auth = _bearer(token)
        assert api.http.get(f"/api/jobs/{job}", headers=auth).status_code == 200
        if end in ("Done", "Failed"):
            api.final(job, job_token, end)
        elif end == "kill":
            api.http.post(f"/api/jobs/{job}/kill")  # a running job: revoked at the request
        elif end == "delete":
            api.http.delete(f"/api/jobs/{job}")
        elif end == "reschedule":
            api.final(job, job_token, "Failed")
            api.http.post(f"/api/jobs/{job}/reschedule")
        else:
            api.stub.server.store.reap_stalled(-1.0, 0)
        answer = api.http.get(f"/api/jobs/{job}", headers=auth)
        assert answer.status_code == 401, (end, answer.text)
        assert answer.json()["detail"] == "payload token unknown or revoked (its job has ended)"
        assert api.mint(job, job_token, random.token_urlsafe(32)).status_code in (403, 409)
        if end == "reschedule":  # back to Waiting: drain it for the next round
            api.match()
            api.stub.server.store.reap_stalled(-1.0, 0)


def test_an_expired_token_is_refused(api: Api) -> None:
    job, _, _, token = _minted(api)
    with sqlite3.connect(api.stub.tmp / "stub.db") as conn:
        conn.execute("UPDATE payload_tokens SET expires = ?", (time.time() - 1,))
    answer = api.http.get(f"/api/jobs/{job}", headers=_bearer(token))
    assert (answer.status_code, answer.json()["detail"]) == (401, "payload token expired")
    forged = api.http.get(f"/api/jobs/{job}", headers=_bearer("pjt." + "0" * 64))
    assert forged.status_code == 401


def test_a_job_without_an_owner_gets_no_token(api: Api) -> None:
    job = api.submit(None)
    _, job_token = api.match()
    answer = api.mint(job, job_token, random.token_urlsafe(32))
    assert answer.json() == {"token": None, "detail": f"job {job} has no owner identity"}


def test_lifetime_is_capped(api: Api) -> None:
    job = api.submit("alice")
    _, job_token = api.match()
    answer = api.mint(job, job_token, random.token_urlsafe(32), lifetime=10**9)
    secret(answer.json()["token"])
    assert answer.json()["expires"] <= time.time() + 7 * 86400 + 1


# -- the pilot's side: the file, renewal, failures -----------------------------------------


class FakeMint:
    def __init__(self, lifetime: float = 600.0, fail: Exception | None = None) -> None:
        self.calls: list[tuple[str, int]] = []
        self.lifetime = lifetime
        self.fail = fail

    def __call__(self, job: MatchedJob, key: str, lifetime: int) -> tuple[str, float] | None:
        self.calls.append((key, lifetime))
        if self.fail is not None:
            raise self.fail
        return "pjt." + hashlib.sha256(key.encode()).hexdigest(), time.time() + self.lifetime


def test_token_file_mode_and_removal(tmp_path: Path) -> None:
    mint = FakeMint()
    holder = bearer.PayloadToken(mint, MatchedJob("7", ""), tmp_path, 4200)
    assert holder.obtain()
    assert holder.path.stat().st_mode & 0o777 == 0o600
    assert holder.path.read_text().startswith("pjt.")
    assert mint.calls[0][1] == 4200
    holder.remove()
    assert not holder.path.exists()


def test_a_short_token_is_renewed_with_the_same_secret(tmp_path: Path) -> None:
    mint = FakeMint(lifetime=4.0)
    holder = bearer.PayloadToken(mint, MatchedJob("7", ""), tmp_path, 60, renew_fraction=0.5)
    assert holder.obtain()
    first = holder.expires
    holder.start_renewal()
    deadline = time.monotonic() + 30
    # the renewal is over when its expiry is taken (the second call alone is not enough:
    # a remove() between the server's answer and the write keeps the old file and expiry)
    while holder.expires == first and time.monotonic() < deadline:
        time.sleep(0.1)
    holder.remove()
    assert len(mint.calls) >= 2 and len({key for key, _ in mint.calls}) == 1
    assert holder.expires > first


def test_failures_to_mint_or_write(tmp_path: Path) -> None:
    refused = bearer.PayloadToken(
        FakeMint(fail=ServerError("refused", 500)), MatchedJob("7", ""), tmp_path, 60
    )
    with pytest.raises(ServerError):
        refused.obtain()
    gone = bearer.PayloadToken(FakeMint(), MatchedJob("7", ""), tmp_path / "no-such-dir", 60)
    with pytest.raises(CredentialError, match=r"cannot write .*bearer-token"):
        gone.obtain()
    assert not any(tmp_path.iterdir())


def test_full_disk_when_writing_the_token(tmp_path: Path, monkeypatch: Any) -> None:
    import os

    def full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    holder = bearer.PayloadToken(FakeMint(), MatchedJob("7", ""), tmp_path, 60)
    with pytest.raises(CredentialError, match="No space left on device"):
        holder.obtain()
    assert list(tmp_path.iterdir()) == []  # no half-written file left behind


def test_a_stub_that_refuses_fails_the_job(token_stub: Stub, pki: Pki, tmp_path: Path) -> None:
    """A mint the stub refuses fails the job with its own minor status, as a refused
    delegation does; the pilot goes on."""
    (job,) = token_stub.submit('Executable = "/bin/true";')
    original = token_stub.server.store.mint_payload_token

    def broken(*args: object) -> None:
        from server_stub.store import StoreError

        raise StoreError("token service disabled for the test", 403)

    token_stub.server.store.mint_payload_token = broken  # type: ignore[method-assign]
    try:
        env = _env(pki, BEARER_TOKEN=PILOT_TOKEN)
        done = run_pilot(["run", "--server", token_stub.url, *FAST], cwd=tmp_path, env=env)
    finally:
        token_stub.server.store.mint_payload_token = original  # type: ignore[method-assign]
    assert done.returncode == 0, done.stderr[-3000:]
    found = token_stub.client.job(job)
    assert found["status"] == "Failed"
    assert found["minor_status"].startswith(f"{bearer.FAILED_MINOR}: "), found


def test_a_lost_mint_reply_is_retried_harmlessly(tmp_path: Path) -> None:
    """The stub mints, its reply is lost on the way (the connection is reset): the pilot's
    retry gets the same token, the stub holds one, and the payload can use it."""
    from testbed.faultproxy import FaultProxy

    stub = start_stub(tmp_path / "stub")
    host, port = stub.server.httpd.server_address[:2]
    proxy = FaultProxy((str(host), int(port)), max_seconds=300).start()
    script = (
        "import json, os, urllib.request, sys\n"
        "req = urllib.request.Request(sys.argv[1] + '/api/jobs/' + os.environ['PILOT_JOB_ID'])\n"
        "token = open(os.environ['BEARER_TOKEN_FILE']).read().strip()\n"
        "req.add_header('Authorization', 'Bearer ' + token)\n"
        "print(json.load(urllib.request.urlopen(req, timeout=30))['status'])\n"
    )
    try:
        (tmp_path / "status.py").write_text(script)
        with httpx.Client(base_url=stub.url, timeout=30) as client:
            jdl = (
                f'Executable = "{sys.executable}"; Arguments = "{tmp_path}/status.py {stub.url}";'
                ' StdOutput = "out.txt"; OutputSandbox = {"out.txt"};'
            )
            answer = client.post("/api/jobs/jdl", json=[jdl], headers={"X-User": "alice"})
            assert answer.status_code == 200, answer.text
            job = int(answer.json()[0]["JobID"])
        proxy.drop_replies(f"POST /api/jobs/{job}/bearer-token".encode(), 1)
        done = run_pilot(["run", "--server", proxy.url, *FAST], cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        assert proxy.lost_replies == 1
        assert stub.status(job) == "Done", stub.client.logging_info(job)
        stub.client.get_output(job, tmp_path / "o")
        assert (tmp_path / "o" / "out.txt").read_text().strip() == "Running"
        assert "payload token" in done.stderr
    finally:
        proxy.stop()
        stub.client.close()
        stub.server.stop()


def test_the_payload_environment_names_only_its_own_token(tmp_path: Path) -> None:
    from pilot.job import jdl, jobrun

    settings = jobrun.JobSettings(
        work_dir=tmp_path,
        pilot_reference="p",
        site="S",
        base_env={"PATH": "/bin", "BEARER_TOKEN": "pilot's", "BEARER_TOKEN_FILE": "/pilot"},
    )
    desc = jdl.JobDescription.from_attrs(
        jdl.parse(
            '[Executable = "true";'
            ' ExecutionEnvironment = {"BEARER_TOKEN=x", "BEARER_TOKEN_FILE=/elsewhere"};]'
        )
    )
    job_dir = tmp_path / "job-1"
    without = jobrun.payload_env(desc, "1", settings, job_dir, 1)
    assert "BEARER_TOKEN" not in without and "BEARER_TOKEN_FILE" not in without
    own = jobrun.payload_env(desc, "1", settings, job_dir, 1, token=job_dir / bearer.TOKEN_FILE)
    assert own["BEARER_TOKEN_FILE"] == str(job_dir / ".bearer-token")
    assert "BEARER_TOKEN" not in own
