"""tests/pidns.py's cluster fixture body without a cluster: skip or (CI) fail when it
cannot start, and the tear-down check. The namespace itself is exercised by test_slurm.py
and test_sge.py."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from tests.pidns import ClusterError, running_cluster


@dataclass
class FakeCluster:
    left: list[int] = field(default_factory=list)
    stopped: bool = False

    def stop(self) -> list[str]:
        self.stopped = True
        return ["pid 7 still in the namespace: SIGKILL"]

    def namespace_pids(self) -> list[int]:
        return self.left


def cannot_start() -> FakeCluster:
    raise ClusterError("needs root")


@pytest.mark.parametrize("ci", ["", "false", "true", "True"])
def test_a_cluster_that_cannot_start_skips_or_fails_under_ci(
    monkeypatch: pytest.MonkeyPatch, ci: str
) -> None:
    monkeypatch.setenv("CI", ci)
    expected = pytest.fail.Exception if ci.lower() == "true" else pytest.skip.Exception
    reason = "cannot start a Fake test cluster: needs root"
    with pytest.raises(expected, match=reason), running_cluster("Fake", cannot_start):
        raise AssertionError("not reached")


def test_tear_down_stops_the_cluster_and_checks_nothing_is_left(
    capsys: pytest.CaptureFixture[str],
) -> None:
    clean = FakeCluster()
    with running_cluster("Fake", lambda: clean) as cluster:
        assert cluster is clean and not clean.stopped
    assert clean.stopped
    assert "fake tear-down:\n  pid 7 still in the namespace" in capsys.readouterr().out
    leaky = FakeCluster(left=[123])
    survived = "processes of the cluster survived tear-down"
    with pytest.raises(AssertionError, match=survived), running_cluster("Fake", lambda: leaky):
        pass
    assert leaky.stopped
