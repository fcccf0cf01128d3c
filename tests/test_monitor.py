"""The Job and Pilot Monitor over HTTP (no browser): escaping, headers, cross-site
request defences, access rules, and the jobs table's SQL filtering, sorting and paging.
The browser tests are in test_monitor_browser.py."""

from __future__ import annotations

import hashlib
import io
import re
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any
from wsgiref.util import setup_testing_defaults

import httpx
import pytest

from pilot.errors import ServerError
from pilot.grid import credentials
from server_stub.app import AuthPolicy, StubApp
from server_stub.monitor import CSP
from server_stub.sandboxes import SandboxStore
from server_stub.store import MONITOR_SORTS, Store, StoreError
from testbed.pki import Pki, pki_fixture  # noqa: F401 (session fixture)
from tests.conftest import BIN, Stub, pilot_env, secret, start_stub
from tests.test_security import _https_stub, _proxy_file

HOSTILE = "<img src=x onerror=alert(1)>"
RES = {"Site": "S", "CPUTime": 10**6, "NumberOfProcessors": 1}


def browser(stub: Stub, **headers: str) -> httpx.Client:
    return httpx.Client(base_url=stub.url, headers=headers, follow_redirects=False, timeout=30)


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
    assert found, "no CSRF field on the page"
    return found.group(1)


def post_form(
    client: httpx.Client, path: str, form: dict[str, str], **headers: str
) -> httpx.Response:
    return client.post(path, data=form, headers=headers)


def _claim(stub: Stub, resources: dict[str, Any] = RES) -> tuple[int, str]:
    answer = stub.client.json(
        "POST", "/api/jobs/match", json={"pilot": "p-1", "resources": resources}
    )
    return int(answer["job_id"]), str(answer["token"])


def _finish(stub: Stub, job_id: int, token: str, status: str = "Done") -> None:
    # a pilot's time stamp: one the stub has not recorded for this job (a repeat is a no-op)
    update = {repr(time.time()): {"Status": status, "MinorStatus": "Execution Complete"}}
    stub.client.json(
        "PATCH", "/api/jobs/status", json={str(job_id): update}, headers={"X-Job-Token": token}
    )


def test_everything_from_users_and_nodes_is_escaped(stub: Stub) -> None:
    (job,) = stub.submit(
        f'JobName = "{HOSTILE}"; Executable = "/bin/echo";'
        ' Arguments = "</pre><script>alert(3)</script>"; Site = "S";'
    )
    check = {
        "name": "vo<b>",
        "required": False,
        "status": "PASSED",
        "message": "<script>alert(2)</script>",
        "duration": 0.1,
        "facts": {"<k>": "<v>"},
        "tags": ["<i>t</i>"],
        "source": "plugin",
    }
    info = {"site": "<s>", "checks": {"ok": True, "tags": ["<i>t</i>"], "results": [check]}}
    stub.client.json("POST", "/api/pilots", json={"stamp": "p-1", "info": info})
    _claim(stub)
    with browser(stub) as web:
        for path in ("/", f"/jobs/{job}", "/pilots", "/pilots/p-1", "/?name=%3Cimg"):
            answer = web.get(path)
            assert answer.status_code == 200, path
            assert answer.headers["content-security-policy"] == CSP
            assert answer.headers["x-content-type-options"] == "nosniff"
            assert answer.headers["x-frame-options"] == "DENY"
            body = answer.text
            for raw in (HOSTILE, "<script>alert", "<b>", "<i>t</i>", "<k>", "<v>", "<s>"):
                assert raw not in body, (path, raw)
        job_page = web.get(f"/jobs/{job}").text
        assert "&lt;img src=x onerror=alert(1)&gt;" in job_page
        # Live without JavaScript too: the page refreshes itself.
        assert '<noscript><meta http-equiv="refresh" content="10"></noscript>' in job_page
        pilot_page = web.get("/pilots/p-1").text
        assert "&lt;script&gt;alert(2)&lt;/script&gt;" in pilot_page
        assert "&lt;i&gt;t&lt;/i&gt;" in pilot_page
        # No inline script or style anywhere: the CSP allows neither.
        page = web.get(f"/jobs/{job}").text
        assert not re.search(r"<script>|<style|<[^>]*\s(on\w+|style)=", page)


def test_actions_need_the_session_token_and_same_origin(stub: Stub) -> None:
    (job,) = stub.submit('Executable = "/bin/true";')
    origin = stub.url
    with browser(stub) as web:
        page = web.get(f"/jobs/{job}")
        token = csrf_of(page.text)
        assert "monitor_session" in page.headers["set-cookie"]
        assert "HttpOnly" in page.headers["set-cookie"]
        assert "SameSite=Strict" in page.headers["set-cookie"]
        path = f"/jobs/{job}/kill"
        refused = [
            post_form(web, path, {"csrf": token}, Origin="http://evil.example"),
            post_form(web, path, {"csrf": token}),  # neither Origin nor Referer
            post_form(web, path, {"other": "1"}, Origin=origin),
            post_form(web, path, {"csrf": "0" * 64}, Origin=origin),
            post_form(web, path, {"csrf": token}, Referer="http://evil.example/x"),
        ]
        assert [r.status_code for r in refused] == [403] * 5
        assert "cross-site request refused" in refused[0].text
        as_json = web.post(path, json={"csrf": token}, headers={"Origin": origin})
        assert as_json.status_code == 400
        assert stub.status(job) == "Waiting"
        with browser(stub) as other:  # another browser's token is not this one's
            other.get("/")
            assert post_form(other, path, {"csrf": token}, Origin=origin).status_code == 403
        done = post_form(web, path, {"csrf": token}, Referer=f"{origin}/jobs/{job}")
        assert done.status_code == 303
        assert done.headers["location"] == f"/jobs/{job}?result=Killed"
    assert stub.status(job) == "Killed"


def test_plain_http_must_be_opened_by_address(stub: Stub) -> None:
    port = stub.url.rsplit(":", 1)[1]
    with browser(stub) as web:
        assert web.get("/", headers={"Host": f"rebound.example:{port}"}).status_code == 403
        assert web.get("/", headers={"Host": f"localhost:{port}"}).status_code == 200
        assert web.get("/", headers={"Host": f"[::1]:{port}"}).status_code == 200


def test_access_rules_are_the_apis(tmp_path: Path) -> None:
    user = secret("monitor-user-token-7")
    pilot = secret("monitor-pilot-token-7")
    stub = start_stub(tmp_path / "stub", auth=AuthPolicy(frozenset({pilot}), frozenset({user})))
    try:
        with browser(stub) as web:
            first = web.get("/jobs/1?x=1")
            assert first.status_code == 303
            assert first.headers["location"] == "/login?next=/jobs/1%3Fx%3D1"
            assert web.get("/live?path=/").status_code == 401
            assert web.get("/static/monitor.css").status_code == 200  # no secret in it
            assert web.get("/", headers={"Authorization": f"Bearer {pilot}"}).status_code == 403
            assert web.get("/", headers={"Authorization": f"Bearer {user}"}).status_code == 200
            form = web.get("/login?next=/pilots")
            token = csrf_of(form.text)
            wrong = post_form(
                web, "/login", {"csrf": token, "token": pilot, "next": "/pilots"}, Origin=stub.url
            )
            assert wrong.status_code == 403 and "not accepted" in wrong.text
            offsite = post_form(
                web,
                "/login",
                {"csrf": token, "token": user, "next": "//evil.example/"},
                Origin=stub.url,
            )
            assert offsite.status_code == 303 and offsite.headers["location"] == "/"
            assert web.get("/pilots").status_code == 200
            assert "Signed in as user-token" in web.get("/").text
            signed_out = post_form(
                web, "/logout", {"csrf": csrf_of(web.get("/").text)}, Origin=stub.url
            )
            assert signed_out.status_code == 303
            assert web.get("/").status_code == 303
    finally:
        stub.client.close()
        stub.server.stop()


def _call(app: StubApp, method: str, path: str, **environ: Any) -> tuple[str, dict[str, str], str]:
    """One request straight into the WSGI app (for identities a test cannot get over TLS)."""
    env: dict[str, Any] = {"REQUEST_METHOD": method, "PATH_INFO": path, **environ}
    setup_testing_defaults(env)
    env.setdefault("wsgi.input", io.BytesIO(b""))
    got: dict[str, Any] = {}

    def start(status: str, headers: list[tuple[str, str]]) -> None:
        got["status"], got["headers"] = status, dict(headers)

    body = b"".join(app(env, start)).decode()
    return got["status"], got["headers"], body


def _alice_and_bob(
    tmp_path: Path,
) -> tuple[Store, StubApp, int, dict[str, str], dict[str, str]]:
    """A stub that needs tokens or certificates, a job of alice's, and the WSGI environ
    entries of alice's and bob's client certificates."""
    store = Store(tmp_path / "stub.db")
    app = StubApp(
        store,
        SandboxStore(tmp_path / "sb", 1 << 20),
        auth=AuthPolicy(frozenset({"p"}), frozenset({"u"})),
    )
    job = store.submit({"Executable": "/bin/true"}, "/DC=org/CN=alice")
    alice = {"stub.peer_identity": "/DC=org/CN=alice", "wsgi.url_scheme": "https"}
    bob = {"stub.peer_identity": "/DC=org/CN=bob", "wsgi.url_scheme": "https"}
    return store, app, job, alice, bob


def test_only_the_owner_may_kill_or_reschedule(tmp_path: Path) -> None:
    store, app, job, alice, bob = _alice_and_bob(tmp_path)
    results = {}
    for name, who in (("bob", bob), ("alice", alice)):
        cookie = f"monitor_session={name}-" + "x" * 40
        status, _, page = _call(app, "GET", f"/jobs/{job}", HTTP_COOKIE=cookie, **who)
        assert status.startswith("200")
        assert ('id="kill"' in page) == (name == "alice")
        form = f"csrf={app.monitor._csrf(name + '-' + 'x' * 40)}".encode()
        results[name] = _call(
            app,
            "POST",
            f"/jobs/{job}/kill",
            HTTP_COOKIE=cookie,
            HTTP_ORIGIN="https://127.0.0.1",
            HTTP_HOST="127.0.0.1",
            CONTENT_TYPE="application/x-www-form-urlencoded",
            CONTENT_LENGTH=str(len(form)),
            **{"wsgi.input": io.BytesIO(form)},
            **who,
        )[0]
    assert results == {"bob": "403 Forbidden", "alice": "303 See Other"}
    assert store.job(job)["status"] == "Killed"


def test_the_json_api_lets_only_the_owner_kill_reschedule_or_delete(tmp_path: Path) -> None:
    """The same rule as the pages: bob's certificate cannot end alice's job over the API."""
    store, app, job, alice, bob = _alice_and_bob(tmp_path)
    for method, path in (
        ("POST", f"/api/jobs/{job}/kill"),
        ("POST", f"/api/jobs/{job}/reschedule"),
        ("DELETE", f"/api/jobs/{job}"),
    ):
        status, _, body = _call(app, method, path, CONTENT_LENGTH="0", **bob)
        assert status.startswith("403") and "only the job's owner" in body, (path, body)
    assert store.job(job)["status"] == "Waiting"
    status, _, _ = _call(app, "POST", f"/api/jobs/{job}/kill", CONTENT_LENGTH="0", **alice)
    assert status.startswith("200") and store.job(job)["status"] == "Killed"


def test_client_certificate_is_the_identity_over_tls(tmp_path: Path, pki: Pki) -> None:
    stub = _https_stub(tmp_path / "mtls", pki, require_cert=True, auth=AuthPolicy())
    try:
        (mine,) = stub.submit('Executable = "/bin/true";')
        theirs = stub.server.store.submit({"Executable": "/bin/true"}, "/O=DIRACTest/CN=other")
        proxy = credentials.load_proxy(_proxy_file(pki, "monitor-user-proxy"))
        verify = credentials.ssl_context(proxy, ca_file=pki.ca_file)
        with httpx.Client(base_url=stub.url, verify=verify, follow_redirects=False) as web:
            page = web.get(f"/jobs/{mine}")
            assert page.status_code == 200
            assert "Signed in as /O=DIRACTest/OU=users/CN=testuser" in page.text
            assert "; Secure" in page.headers["set-cookie"]
            assert 'id="kill"' in page.text
            other = web.get(f"/jobs/{theirs}")
            assert other.status_code == 200 and 'id="kill"' not in other.text
            origin = stub.url
            form = {"csrf": csrf_of(page.text)}
            assert post_form(web, f"/jobs/{theirs}/kill", form, Origin=origin).status_code == 403
            assert post_form(web, f"/jobs/{mine}/kill", form, Origin=origin).status_code == 303
        assert stub.status(mine) == "Killed"
        assert stub.server.store.job(theirs)["status"] == "Waiting"
    finally:
        stub.client.close()
        stub.server.stop()


def test_reschedule_puts_a_finished_job_back(stub: Stub) -> None:
    (job,) = stub.submit('Executable = "/bin/true"; Site = "S";')
    claimed, token = _claim(stub)
    assert claimed == job
    with pytest.raises(StoreError, match="only a"):
        stub.server.store.reschedule(job)  # Matched: not yet
    _finish(stub, job, token, "Failed")
    with browser(stub) as web:
        page = web.get(f"/jobs/{job}").text
        assert 'id="reschedule"' in page and 'id="kill"' not in page
        done = post_form(web, f"/jobs/{job}/reschedule", {"csrf": csrf_of(page)}, Origin=stub.url)
        assert done.status_code == 303
        shown = web.get(done.headers["location"]).text
        assert "Rescheduled" in shown
    after = stub.client.job(job)
    assert after["status"] == "Waiting" and after["reschedules"] == 1 and after["pilot"] is None
    again, token = _claim(stub)  # and a pilot can take it again
    assert again == job
    _finish(stub, job, token)
    done = subprocess.run(
        [str(BIN / "pilot-stub"), "--server", stub.url, "reschedule", str(job)],
        capture_output=True,
        text=True,
        timeout=60,
        env=pilot_env(),
    )
    assert done.returncode == 0 and done.stdout == f"job {job}: Rescheduled\n", done.stderr
    assert stub.client.job(job)["reschedules"] == 2
    with pytest.raises(ServerError, match="409"):
        stub.client.reschedule(job)  # Waiting: nothing to do


def test_output_download_and_pilot_log(stub: Stub, tmp_path: Path) -> None:
    (job,) = stub.submit('Executable = "/bin/true"; Site = "S";')
    stub.client.json("POST", "/api/pilots", json={"stamp": "p-1", "info": {}})
    _, token = _claim(stub)
    blob = tmp_path / "out.tar.gz"
    blob.write_bytes(b"\x1f\x8b not really")
    sha = stub.client.put_sandbox(blob)
    stub.client.json(
        "PATCH",
        f"/api/jobs/{job}/sandbox/output",
        json={"sha256": sha},
        headers={"X-Job-Token": token},
    )
    stub.client.json("PUT", "/api/pilots/p-1/log", json={"log": "<b>line</b>\n"})
    with browser(stub) as web:
        got = web.get(f"/jobs/{job}/output")
        assert got.status_code == 200 and got.content == blob.read_bytes()
        assert hashlib.sha256(got.content).hexdigest() == sha
        assert (
            got.headers["content-disposition"] == f'attachment; filename="job-{job}-output.tar.gz"'
        )
        log = web.get("/pilots/p-1/log")
        assert log.headers["content-type"].startswith("text/plain") and log.text == "<b>line</b>\n"
        assert log.headers["content-security-policy"] == CSP


def test_last_match_explains_why_nothing_matched(stub: Stub) -> None:
    stub.submit('Executable = "/bin/true"; Site = "Far"; Parameters = 3;')
    stub.client.json("POST", "/api/pilots", json={"stamp": "p-1", "info": {}})
    answer = stub.client.json("POST", "/api/jobs/match", json={"pilot": "p-1", "resources": RES})
    assert answer is None
    with browser(stub) as web:
        page = web.get("/pilots/p-1").text
        assert "nothing matched it" in page and "3 job(s) are waiting now" in page
        assert "site S not in job&#x27;s sites Far" in page
        assert "nothing matched" in web.get("/pilots").text


def test_live_version_follows_the_page(stub: Stub) -> None:
    (job,) = stub.submit('Executable = "/bin/true"; Site = "S";')
    with browser(stub) as web:
        web.get("/")  # a session, as the page's script has
        before = web.get("/live", params={"path": f"/jobs/{job}"}).json()["version"]
        assert web.get("/live", params={"path": f"/jobs/{job}"}).json()["version"] == before
        _claim(stub)
        after = web.get("/live", params={"path": f"/jobs/{job}"}).json()["version"]
        assert after != before
        listing = web.get("/live", params={"path": "/?status=Matched"}).json()["version"]
        assert re.fullmatch(r"[0-9a-f]{20}", listing)
        assert web.get("/live", params={"path": "http://evil.example/"}).status_code == 400


def test_bad_table_parameters_are_named(stub: Stub) -> None:
    with browser(stub) as web:
        for query, words in (
            ("page=0", "page must be a whole number from 1"),
            ("size=x", "size must be a whole number"),
            ("sort=jdl", "sort must be one of id, status"),
            ("dir=up", "dir must be asc or desc"),
        ):
            answer = web.get(f"/?{query}")
            assert answer.status_code == 400 and words in answer.text, query
        assert web.get("/nowhere").status_code == 404
        assert web.put("/").status_code == 405


# -- the jobs table's queries --------------------------------------------------------------


@pytest.fixture
def many(tmp_path: Path) -> Store:
    """600 jobs of 3 sites, 4 owners and varied names and statuses, straight into the store."""
    store = Store(tmp_path / "stub.db")
    store.ensure_monitor_indexes()
    db = sqlite3.connect(tmp_path / "stub.db")
    with db:
        for i in range(600):
            db.execute(
                "INSERT INTO jobs (jdl, owner, status, minor, application, requirements,"
                " submitted, updated, site, name) VALUES ('[]', ?, ?, ?, ?, '{}', ?, ?, ?, ?)",
                (
                    f"owner{i % 4}" if i % 7 else None,
                    ("Waiting", "Running", "Done", "Failed")[i % 4],
                    f"minor {i % 5}",
                    "100% done" if i % 11 == 0 else f"app_{i % 3}",
                    1000.0 + i,
                    2000.0 + (i * 53) % 600,
                    f"Site{i % 3}" if i % 5 else None,
                    f"job-{(i * 13) % 600:03d}",
                ),
            )
    db.close()
    return store


def _python_page(
    rows: list[dict[str, Any]], filters: dict[str, str], sort: str, desc: bool
) -> list[int]:
    keys = {"minor": "minor_status", "application": "application_status", "name": "job_name"}
    keep = []
    for row in rows:
        ok = all(
            (row[keys.get(k, k)] or "") == v
            if k in ("status", "site", "owner")
            else v.lower() in (row[keys.get(k, k)] or "").lower()
            for k, v in filters.items()
        )
        if ok:
            keep.append(row)
    column = {"id": "job_id", "submitted": "job_id", **keys}.get(sort, sort)

    def key(row: dict[str, Any]) -> tuple[int, Any, int]:
        value = row[column]
        return (0 if value is None else 1, value if value is not None else 0, row["job_id"])

    return [r["job_id"] for r in sorted(keep, key=key, reverse=desc)]


@pytest.mark.parametrize(
    "filters",
    [
        {},
        {"status": "Running"},
        {"site": "Site1", "owner": "owner3"},
        {"name": "job-1"},
        {"application": "100%"},  # a literal %, not a wildcard
        {"application": "p_1"},  # a literal _, not a wildcard
        {"minor": "MINOR 2", "status": "Done"},
    ],
)
def test_table_filters_sorts_and_pages_like_python(many: Store, filters: dict[str, str]) -> None:
    everything, total = many.monitor_jobs({}, limit=10_000)
    assert total == 600
    for sort in MONITOR_SORTS:
        for desc in (True, False):
            expected = _python_page(everything, filters, sort, desc)
            got: list[int] = []
            for offset in range(0, 600, 128):  # from 512 on, the deep-page query
                rows, count = many.monitor_jobs(filters, sort, desc, offset, 128)
                assert count == len(expected)
                got.extend(r["job_id"] for r in rows)
            assert got == expected, (filters, sort, desc)


def test_table_queries_walk_indexes(many: Store) -> None:
    """Pages sorted by a column written once (or the application status) are read in
    index order (no sort of every row), exact filters use an index: what keeps a page
    fast at 10^5 jobs (bench/monitor.py measures it, also for the columns without one)."""
    db = many._conn()

    def plan(sql: str, args: tuple[Any, ...] = ()) -> str:
        return " | ".join(r[3] for r in db.execute("EXPLAIN QUERY PLAN " + sql, args))

    # (the application status too: sorting deep into the list by it was over the goal)
    for column in ("id", "status", "site", "owner", "name", "application"):
        for way in ("ASC", "DESC"):
            text = plan(f"SELECT id FROM jobs ORDER BY {column} {way}, id {way} LIMIT 50")
            assert "TEMP B-TREE" not in text, (column, text)
    for column in ("minor", "updated"):  # pilots update them: one index
        text = plan(f"SELECT id FROM jobs ORDER BY {column} DESC, id DESC LIMIT 50")
        assert "COVERING INDEX mon_list" in text, (column, text)  # not the wide rows
    assert set(MONITOR_SORTS.values()) == {
        "id",
        "status",
        "site",
        "owner",
        "name",
        "minor",
        "application",
        "updated",
    }
    for column in ("status", "site", "owner"):
        text = plan(f"SELECT id FROM jobs WHERE {column} = ? ORDER BY id DESC LIMIT 50", ("x",))
        assert "INDEX mon_" in text and "TEMP B-TREE" not in text, (column, text)
        assert "USING" in plan(f"SELECT COUNT(*) FROM jobs WHERE {column} = ?", ("x",))
    assert "USING" in plan("SELECT id FROM jobs WHERE pilot = ? ORDER BY id DESC", ("p",))
    deep = plan("SELECT id FROM jobs ORDER BY id DESC LIMIT 50 OFFSET 500")
    assert "COVERING INDEX mon_list" in deep, deep


def test_job_name_is_stored_at_submission(stub: Stub) -> None:
    ids = stub.submit('JobName = "n-%s"; Executable = "/bin/true"; Parameters = {"a", "b"};')
    rows, total = stub.server.store.monitor_jobs({"name": "n-"}, "name", False)
    assert total == 2 and [r["job_name"] for r in rows] == ["n-a", "n-b"]
    assert [r["job_id"] for r in rows] == ids
    assert stub.client.job(ids[0])["job_name"] == "n-a"
    assert time.time() - rows[0]["submitted"] < 600


def test_a_database_from_before_the_monitor_is_upgraded(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "old.db")
    db.execute(
        "CREATE TABLE jobs (id INTEGER PRIMARY KEY AUTOINCREMENT, jdl TEXT NOT NULL,"
        " owner TEXT, status TEXT NOT NULL, minor TEXT NOT NULL DEFAULT '',"
        " application TEXT NOT NULL DEFAULT '', priority INTEGER NOT NULL DEFAULT 1,"
        " requirements TEXT NOT NULL, submitted REAL NOT NULL, updated REAL NOT NULL,"
        " pilot TEXT, site TEXT, token_hash TEXT, heartbeat REAL, heartbeat_data TEXT,"
        " reschedules INTEGER NOT NULL DEFAULT 0, kill_requested INTEGER NOT NULL DEFAULT 0,"
        " output_sandbox TEXT, timing TEXT)"
    )
    db.execute(
        "INSERT INTO jobs (jdl, status, requirements, submitted, updated)"
        " VALUES ('[]', 'Done', '{}', 1, 1)"
    )
    db.commit()
    db.close()
    store = Store(tmp_path / "old.db")
    StubApp(store, SandboxStore(tmp_path / "sb", 1 << 20))
    rows, total = store.monitor_jobs({})
    assert total == 1 and rows[0]["job_name"] == ""
    new = store.submit({"Executable": "/bin/true", "JobName": "after"}, None)
    assert store.job(new)["job_name"] == "after"


def test_the_sign_in_redirect_stays_on_the_site_and_in_its_header(tmp_path: Path) -> None:
    """``next`` comes from a link anyone can make: a tab (dropped by browsers, so that
    "/<tab>/evil.example" is "//evil.example") or a line break (a header of the
    attacker's own) must not survive into the Location header."""
    user = secret("monitor-user-token-8")
    stub = start_stub(tmp_path / "stub", auth=AuthPolicy(frozenset(), frozenset({user})))
    try:
        for target, location in (
            ("/\t/evil.example/", "/%09/evil.example/"),
            ("/\r\nSet-Cookie: planted=1", "/%0D%0ASet-Cookie:%20planted=1"),
            ("/jobs/1?name=\u65e5", "/jobs/1?name=%E6%97%A5"),
            ("/?status=Done&sort=id", "/?status=Done&sort=id"),
        ):
            with browser(stub) as web:
                token = csrf_of(web.get("/login").text)
                done = post_form(
                    web, "/login", {"csrf": token, "token": user, "next": target}, Origin=stub.url
                )
                assert done.status_code == 303 and done.headers["location"] == location
                assert "planted" not in str(done.headers.get_list("set-cookie"))
    finally:
        stub.client.close()
        stub.server.stop()


def test_the_api_refuses_requests_from_other_sites(stub: Stub) -> None:
    """A page on any site can make a browser POST text/plain to a loopback stub (no
    preflight): on an open stub that submitted and killed jobs. Browsers name the page's
    origin; the API takes only its own (by address, against DNS rebinding) or none."""
    (job,) = stub.submit('Executable = "/bin/true";')
    port = stub.url.rsplit(":", 1)[1]
    payload = '"Executable = \\"/bin/sh\\"; Arguments = \\"-c id\\";"'
    evil = {"Content-Type": "text/plain;charset=UTF-8", "Origin": "http://evil.example"}
    rebound = {"Origin": f"http://rebound.example:{port}", "Host": f"rebound.example:{port}"}
    with httpx.Client(base_url=stub.url) as web:
        refused = [
            web.post("/api/jobs/jdl", content=payload, headers=evil),
            web.post(f"/api/jobs/{job}/kill", headers=evil),
            web.post("/api/jobs/jdl", content=payload, headers=rebound),
            web.get("/api/jobs", headers=rebound),
        ]
        assert [r.status_code for r in refused] == [403] * 4
        assert "cross-site request refused" in refused[0].text
        assert [j["job_id"] for j in stub.client.jobs()] == [job]
        assert stub.status(job) == "Waiting"
        own = web.post("/api/jobs/jdl", content=payload, headers={"Origin": stub.url})
        assert own.status_code == 200  # the server's own pages may


def test_a_job_id_beyond_64_bits_is_no_server_error(stub: Stub) -> None:
    """SQLite's integers are 64-bit: a bigger id was a 500 'internal error' and a logged
    traceback, on the API and on the pages."""
    huge = "9" * 30
    for method, path in (
        ("GET", f"/api/jobs/{huge}"),
        ("POST", f"/api/jobs/{huge}/kill"),
        ("GET", f"/api/jobs/{huge}/sandbox/output"),
    ):
        answer = httpx.request(method, stub.url + path, timeout=10)
        assert answer.status_code == 400 and "out of range" in answer.text, (path, answer.text)
    page = httpx.get(f"{stub.url}/jobs/{huge}", timeout=10)
    assert page.status_code == 404 and "no such job" in page.text
