"""The suite-wide log scan (conftest) must actually find what it looks for."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tests.conftest import PLANTED, scan_for_secrets, secret


def test_scan_finds_keys_and_registered_tokens(tmp_path: Path) -> None:
    planted = tmp_path / PLANTED
    planted.mkdir()
    token = secret("scan-self-test-token-0987")
    (planted / "clean.log").write_text("nothing to see\n")
    assert scan_for_secrets(tmp_path, [], planted=True) == []
    (planted / "a").mkdir()
    (planted / "a" / "pilot.log").write_text(f"Authorization: Bearer {token}\n")
    (planted / "stderr").write_text("-----BEGIN RSA PRIVATE KEY-----\nMII...\n")
    with sqlite3.connect(planted / "stub.db") as db:
        db.execute("CREATE TABLE pilots (stamp TEXT, log TEXT)")
        db.execute("INSERT INTO pilots VALUES ('p1', ?)", (f"token {token}",))
    found = scan_for_secrets(tmp_path, [], planted=True)
    assert any("pilot.log: registered secret" in f for f in found)
    assert any("stderr: private key block" in f for f in found)
    assert any("pilot p1: registered secret" in f for f in found)
    assert len(found) == 3
