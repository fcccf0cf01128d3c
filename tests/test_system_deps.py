"""scripts/system-deps.sh against fake dpkg-query, apt-get and apt-cache: what it installs
when the mirror lacks a package, when apt's lists lock is held for a while, when another
run is installing, and that policy-rc.d (no service starts) is only ever its own."""

from __future__ import annotations

import fcntl
import subprocess
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "system-deps.sh"
FAKES = {
    # installed: the names in $FAKE/installed
    "dpkg-query": 'grep -qx "${@: -1}" "$FAKE/installed" && printf "install ok installed"\n',
    "id": "echo 0\n",
    "hostname": "echo testhost\n",
    "sleep": "true\n",
    "debconf-set-selections": 'cat >> "$FAKE/debconf"\n',
    # a candidate for every package but those in $FAKE/absent
    "apt-cache": 'grep -qx "$2" "$FAKE/absent" || printf "%s:\\n  Candidate: 1.0\\n" "$2"\n',
    # update fails while $FAKE/update-failures counts down; install records its packages
    # and whether policy-rc.d forbade service starts at the time
    "apt-get": """echo "$*" >> "$FAKE/apt-get.log"
case " $* " in
*" update "*)
    left=$(cat "$FAKE/update-failures" 2>/dev/null || echo 0)
    [ "$left" -gt 0 ] && { echo $((left - 1)) > "$FAKE/update-failures"; exit 100; }
    exit 0;;
*" install "*)
    "$SYSTEM_DEPS_POLICY_RC_D"; echo "policy exit $?" >> "$FAKE/apt-get.log"
    exit "$(cat "$FAKE/install-rc" 2>/dev/null || echo 0)";;
esac
""",
}


def wanted_by_the_script() -> list[str]:
    text = SCRIPT.read_text()
    start = text.index("pkgs=(") + len("pkgs=(")
    return text[start : text.index(")", start)].split()


@pytest.fixture
def fake(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in FAKES.items():
        (bin_dir / name).write_text("#!/bin/bash\n" + body)
        (bin_dir / name).chmod(0o755)
    (tmp_path / "installed").write_text("")
    (tmp_path / "absent").write_text("")
    return tmp_path


def env_of(fake: Path) -> dict[str, str]:
    return {
        "PATH": f"{fake / 'bin'}:/usr/bin:/bin",
        "FAKE": str(fake),
        "SYSTEM_DEPS_LOCK": str(fake / "lock"),
        "SYSTEM_DEPS_POLICY_RC_D": str(fake / "policy-rc.d"),
    }


def run(fake: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT)], env=env_of(fake), capture_output=True, text=True, timeout=60
    )


def installs(fake: Path) -> list[list[str]]:
    lines = (fake / "apt-get.log").read_text().splitlines()
    return [line.split(" install ")[1].split()[3:] for line in lines if " install " in line]


def test_a_package_missing_from_the_mirror_is_named_and_the_rest_installed(fake: Path) -> None:
    (fake / "installed").write_text("munge\n")
    (fake / "absent").write_text("chromium-driver\n")
    done = run(fake)
    assert done.returncode == 0, done.stderr
    assert "not installing: chromium-driver" in done.stderr
    (wanted,) = installs(fake)
    assert "chromium-driver" not in wanted and "munge" not in wanted
    assert {"slurm-wlm", "chromium"} <= set(wanted)
    assert "policy exit 101" in (fake / "apt-get.log").read_text()  # no service started
    assert not (fake / "policy-rc.d").exists()


def test_apt_waits_for_locks_and_update_is_retried(fake: Path) -> None:
    (fake / "update-failures").write_text("2\n")  # the lists lock held by someone else
    done = run(fake)
    assert done.returncode == 0, done.stderr
    log = (fake / "apt-get.log").read_text().splitlines()
    assert [line.split()[-2:] for line in log[:3]] == [["update", "-qq"]] * 3
    assert all(line.startswith("-o DPkg::Lock::Timeout=600 ") for line in log if "exit" not in line)
    assert len(installs(fake)) == 1


def test_a_failed_install_fails(fake: Path) -> None:
    (fake / "install-rc").write_text("100\n")
    done = run(fake)
    assert done.returncode == 1 and "apt-get install failed" in done.stderr
    assert not (fake / "policy-rc.d").exists()


def test_a_foreign_policy_rc_d_is_kept_and_a_leftover_of_ours_removed(fake: Path) -> None:
    policy = fake / "policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 104\n")
    policy.chmod(0o755)
    assert run(fake).returncode == 0
    assert policy.read_text() == "#!/bin/sh\nexit 104\n"
    policy.write_text("#!/bin/sh\n# pilot-agent system-deps\nexit 101\n")  # a run killed -9
    assert run(fake).returncode == 0
    assert not policy.exists()


def test_a_second_run_waits_for_the_first_and_installs_nothing_it_installed(
    fake: Path,
) -> None:
    with open(fake / "lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        second = subprocess.Popen(
            ["bash", str(SCRIPT)], env=env_of(fake), stderr=subprocess.PIPE, text=True
        )
        time.sleep(1.0)
        assert second.poll() is None  # waiting for the lock
        (fake / "installed").write_text("".join(p + "\n" for p in wanted_by_the_script()))
    _, err = second.communicate(timeout=60)
    assert second.returncode == 0, err
    assert "another run is installing; waiting for it" in err
    assert not (fake / "apt-get.log").exists()
