"""Inputs and outputs beyond the plain sandbox: SB: references, LFNs, URLs, InputData,
OutputData, and an output sandbox over its size limit."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pilot.errors import ServerError
from tests.conftest import FAST, Stub, run_pilot


@pytest.fixture
def web(tmp_path: Path) -> Iterator[str]:
    """A plain HTTP file server on loopback serving ``tmp_path / 'www'``."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _tar_bz2(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:bz2") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_sb_lfn_url_and_input_data(stub: Stub, tmp_path: Path, web: str) -> None:
    raw = tmp_path / "raw.tar.bz2"
    raw.write_bytes(_tar_bz2({"run.sh": b"#!/bin/sh\ncat lfn.txt url.txt data.dat > all.txt\n"}))
    sha = stub.client.put_sandbox(raw)
    for lfn, content in (
        ("LFN:/vo/in/lfn.txt", b"from lfn\n"),
        ("LFN:/vo/data/data.dat", b"data\n"),
    ):
        path = tmp_path / lfn.rsplit("/", 1)[1]
        path.write_bytes(content)
        stub.client.put_file(lfn, path)
    (tmp_path / "www" / "url.txt").write_bytes(b"from url\n")
    (job,) = stub.submit(
        f'Executable = "run.sh"; InputSandbox = {{"SB:{sha}", "LFN:/vo/in/lfn.txt",'
        f' "{web}/url.txt"}}; InputData = {{"LFN:/vo/data/data.dat"}};'
        ' OutputSandbox = {"all.txt"}; OutputData = {"all.txt"}; OutputPath = "/vo/results";'
    )
    done = run_pilot(["run", "--server", stub.url, *FAST], cwd=tmp_path)
    assert stub.status(job) == "Done", done.stderr
    stub.client.get_output(job, tmp_path / "o")
    assert (tmp_path / "o" / "all.txt").read_bytes() == b"from lfn\nfrom url\ndata\n"
    stored = stub.client.json("GET", "/api/files/LFN:/vo/results/all.txt")
    assert stored["sha256"] == hashlib.sha256(b"from lfn\nfrom url\ndata\n").hexdigest()


def test_sandbox_put_refuses_a_body_with_another_hash(stub: Stub, tmp_path: Path) -> None:
    blob = tmp_path / "b"
    blob.write_bytes(b"abc")
    with pytest.raises(ServerError, match="sha256"):
        stub.client.upload(f"/api/sandboxes/{hashlib.sha256(b'abd').hexdigest()}", blob)


def test_missing_lfn_fails_the_job_with_reason(stub: Stub, tmp_path: Path) -> None:
    (job,) = stub.submit('Executable = "/bin/true"; InputSandbox = {"LFN:/vo/none.txt"};')
    run_pilot(["run", "--server", stub.url, *FAST], cwd=tmp_path)
    info = stub.client.job(job)
    assert info["status"] == "Failed" and "LFN:/vo/none.txt" in info["minor_status"]


def test_output_data_that_cannot_be_stored_fails_the_job(stub: Stub, tmp_path: Path) -> None:
    """OutputData the payload did not write: Failed (not Done), the sandbox still back;
    a payload that failed stores no OutputData at all (as DIRAC's JobWrapper)."""
    (missing,) = stub.submit(
        'Executable = "/bin/sh"; Arguments = "-c \'echo hi > other.txt\'";'
        ' OutputSandbox = {"other.txt"}; OutputData = {"result.txt"};'
    )
    (failing,) = stub.submit(
        'Executable = "/bin/sh"; Arguments = "-c \'echo x > r.txt; exit 3\'";'
        ' OutputData = {"r.txt"}; OutputPath = "/vo/failing";'
    )
    done = run_pilot(["run", "--server", stub.url, *FAST], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    info = stub.client.job(missing)
    assert info["status"] == "Failed", info
    assert info["minor_status"] == "OutputData result.txt not found"
    assert stub.client.get_output(missing, tmp_path / "o") == ["other.txt"]
    history = [row["MinorStatus"] for row in stub.client.logging_info(missing)]
    assert "Uploading Output Data" in history
    assert stub.client.job(failing)["minor_status"] == "Payload failed with exit code 3"
    with pytest.raises(ServerError, match="404"):
        stub.client.json("GET", "/api/files/LFN:/vo/failing/r.txt")


def test_oversized_output_still_returns_stdout_and_stderr(stub: Stub, tmp_path: Path) -> None:
    (job,) = stub.submit(
        'Executable = "/bin/sh"; Arguments = "-c \'echo out; echo err >&2;'
        ' head -c 3000000 /dev/urandom > big.bin\'"; StdOutput = "StdOut"; StdError = "StdErr";'
        ' OutputSandbox = {"StdOut", "StdErr", "big.bin"};'
    )
    done = run_pilot(["run", "--server", stub.url, "--max-output-mb", "1", *FAST], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    info = stub.client.job(job)
    assert info["status"] == "Done"
    assert "dropped from output sandbox (size limit): big.bin" in info["application_status"]
    names = stub.client.get_output(job, tmp_path / "o")
    assert sorted(names) == ["StdErr", "StdOut"]
    assert (tmp_path / "o" / "StdOut").read_text() == "out\n"


def test_an_lfn_with_query_or_fragment_characters_keeps_its_whole_name(
    stub: Stub, tmp_path: Path
) -> None:
    """The catalogue route carries the LFN escaped: ``?`` and ``#`` used to cut the name
    short (``LFN:/vo/a?b`` was stored as ``LFN:/vo/a``)."""
    from pilot.backends.base import MatchedJob
    from pilot.backends.stub import HttpClient, StubBackend

    source = tmp_path / "result.txt"
    source.write_bytes(b"odd name\n")
    job = MatchedJob("1", "")
    with HttpClient(stub.url) as http:
        backend = StubBackend(http)
        for lfn in ("LFN:/vo/a?b=1", "LFN:/vo/c#d", "LFN:/vo/e%20f"):
            backend.store_lfn(job, lfn, source)
            backend.fetch_lfn(job, lfn, tmp_path / "back")
            assert (tmp_path / "back").read_bytes() == b"odd name\n"
            stored = stub.server.store.file(lfn)["sha256"]
            assert stored == hashlib.sha256(b"odd name\n").hexdigest()
        with pytest.raises(ServerError, match="404"):
            backend.fetch_lfn(job, "LFN:/vo/a", tmp_path / "cut")  # never stored under that
