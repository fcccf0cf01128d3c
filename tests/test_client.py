"""HttpClient's retries: transport errors and 5xx retried within RetryPolicy, nothing else."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pilot.backends.stub import HttpClient, RetryPolicy
from pilot.errors import AuthError, ServerError, ServerUnreachable

FAST = RetryPolicy(attempts=4, max_wait=0.01, deadline=30.0)


def client(
    answers: Iterator[int | Exception], policy: RetryPolicy = FAST
) -> tuple[HttpClient, list[str]]:
    """A client whose server answers with the given codes, or raises the given errors."""
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return httpx.Response(answer, json={"n": len(seen)})

    return HttpClient(
        "http://stub.test", retry=policy, transport=httpx.MockTransport(handler)
    ), seen


def test_5xx_then_success_is_retried_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    http, seen = client(iter([503, 500, 200]))
    with caplog.at_level(logging.WARNING, logger="pilot.backends.stub"):
        assert http.json("GET", "/api/x") == {"n": 3}
    assert len(seen) == 3
    retries = [r.getMessage() for r in caplog.records if "retry" in r.getMessage()]
    assert len(retries) == 2 and "retry 1 in" in retries[0] and "retry 2 in" in retries[1]


def test_5xx_every_time_gives_up_after_the_attempts() -> None:
    http, seen = client(iter([502] * 10))
    with pytest.raises(ServerError, match="server error 502"):
        http.call("POST", "/api/jobs/match")
    assert len(seen) == FAST.attempts


def test_transport_errors_are_retried_then_reported_unreachable() -> None:
    refused = httpx.ConnectError("connection refused")
    http, seen = client(iter([refused] * 10))
    with pytest.raises(ServerUnreachable, match="connection refused"):
        http.call("GET", "/api/ping")
    assert len(seen) == FAST.attempts
    http, seen = client(iter([refused, 200]))
    assert http.call("GET", "/api/ping").status_code == 200 and len(seen) == 2


@pytest.mark.parametrize(
    ("code", "error"), [(400, ServerError), (404, ServerError), (403, AuthError)]
)
def test_4xx_is_not_retried(code: int, error: type[Exception]) -> None:
    http, seen = client(iter([code, 200]))
    with pytest.raises(error):
        http.call("GET", "/api/x")
    assert len(seen) == 1


def test_a_single_attempt_policy_tries_once() -> None:
    http, seen = client(iter([503, 200]), RetryPolicy(attempts=1))
    with pytest.raises(ServerError):
        http.call("GET", "/api/x")
    assert len(seen) == 1


def test_deadline_counts_from_the_first_attempt() -> None:
    def slow_failure() -> Iterator[int | Exception]:
        while True:
            time.sleep(0.2)
            yield 503

    http, seen = client(slow_failure(), RetryPolicy(attempts=100, max_wait=0.01, deadline=0.5))
    started = time.monotonic()
    with pytest.raises(ServerError):
        http.call("GET", "/api/x")
    assert time.monotonic() - started < 0.5 + 0.2 + 0.5  # one attempt may overrun it
    assert 2 <= len(seen) <= 4


def test_uploads_are_retried(tmp_path: Path) -> None:
    source = tmp_path / "up.bin"
    source.write_bytes(b"x" * 10)
    http, seen = client(iter([503, 200]))
    assert http.upload("/api/sandboxes", source) == {"n": 2}
    assert len(seen) == 2


def _run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_tenacity_is_imported_only_when_a_call_fails() -> None:
    code = """
import sys, httpx
from pilot.backends.stub import HttpClient, RetryPolicy
answers = iter([{first}, 200])
transport = httpx.MockTransport(lambda request: httpx.Response(next(answers)))
http = HttpClient("http://stub.test", retry=RetryPolicy(max_wait=0.01), transport=transport)
http.call("GET", "/x")
print("tenacity" in sys.modules)
"""
    assert _run(code.format(first=200)) == "False"
    assert _run(code.format(first=503)) == "True"
