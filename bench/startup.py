"""Start-up: time from spawning a pilot to its first payload running, in one run.

Against the matcher stub on loopback, one job at a time whose input sandbox holds
``stamp.sh``, a script that writes the wall-clock time it started to a file. Measured
from just before spawning:

- the one-file binary (``dist/pilot``; ``make binary``),
- the installed package: pilot-agent's wheel installed in a virtualenv of its own, as a
  site would install it (the development venv's install is editable, which adds a path
  finder to every start, and carries the test plugin); its dependencies are linked from
  the development venv,
- a baseline shell script doing the same calls with curl and tar (register, match,
  status, sandbox download and unpack, run) and nothing else.

Both pilots also run with the CPU benchmark check disabled, to show its share, and with
an X.509 proxy to read (``X509_USER_PROXY``, made for the run with testbed/pki.py), the
usual case on the grid, where the pilot imports cryptography to check it. Each variant runs
``-n`` times, interleaved; the median and the minimum are printed, then the ratios and the
binary's size.

    python bench/startup.py [-n 5] [--binary dist/pilot]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import stubproc

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
STAMP_SH = '#!/bin/sh\ndate +%s.%N > "$1"\n'
RESOURCES = {"Site": "Bench.Site", "CPUTime": 10**9, "NumberOfProcessors": 1, "MaxRAM": 4000}

# The baseline: the same calls as a pilot's first job, with curl and tar, nothing more.
BASELINE_SH = r"""#!/bin/sh
set -eu
url=$1 work=$2 res=$3
curl -sfS -X POST "$url/api/pilots" -H 'Content-Type: application/json' \
    -d '{"stamp": "baseline", "info": {}}' >/dev/null
job=$(curl -sfS -X POST "$url/api/jobs/match" -H 'Content-Type: application/json' \
    -d "{\"pilot\": \"baseline\", \"resources\": $res}")
id=$(printf '%s' "$job" | sed -n 's/.*"job_id": *\([0-9]*\).*/\1/p')
token=$(printf '%s' "$job" | sed -n 's/.*"token": *"\([^"]*\)".*/\1/p')
sha=$(printf '%s' "$job" | sed -n 's/.*SB:\([0-9a-f]\{64\}\).*/\1/p')
marker=$(printf '%s' "$job" | sed -n 's/.*Arguments *= *\\"\([^\\]*\)\\".*/\1/p')
status() {
    curl -sfS -X PATCH "$url/api/jobs/status" -H 'Content-Type: application/json' \
        -H "X-Job-Token: $token" \
        -d "{\"$id\": {\"$(date +%s.%N)\": {\"Status\": \"$1\", \"MinorStatus\": \"$2\"}}}" \
        >/dev/null
}
status Running "Downloading InputSandbox"
mkdir -p "$work/job-$id" && cd "$work/job-$id"
curl -sfS "$url/api/sandboxes/$sha" | tar -xzf -
status Running Application
./stamp.sh "$marker"
status Done "Execution Complete"
"""


@dataclass(frozen=True)
class Variant:
    name: str
    argv: tuple[str, ...]  # {url} {work} filled in per run
    proxy: bool = False  # X509_USER_PROXY set to the run's proxy


def make_proxy(tmp: Path) -> Path:
    """A proxy of a throw-away CA's user, as grid-proxy-init would write it."""
    sys.path.insert(0, str(REPO))
    from testbed import pki

    user = pki.issue_user(pki.make_ca(), cn="bench user")
    return pki.write_private(tmp / "x509up", pki.proxy_pem(pki.issue_proxy(user), [user.cert]))


def start_stub(tmp: Path) -> tuple[subprocess.Popen[str], str]:
    return stubproc.start_stub(tmp / "bench.db")


def submit(url: str, tmp: Path, marker: Path) -> None:
    folder = tmp / "submit"
    folder.mkdir(exist_ok=True)
    (folder / "stamp.sh").write_text(STAMP_SH)
    (folder / "stamp.sh").chmod(0o755)
    (folder / "job.jdl").write_text(
        f'Executable = "stamp.sh"; Arguments = "{marker}"; InputSandbox = {{"stamp.sh"}};'
        " CPUTime = 100;"
    )
    subprocess.run(
        [str(BIN / "pilot-stub"), "--server", url, "submit", str(folder / "job.jdl")],
        check=True,
        capture_output=True,
    )


def pilot_argv(program: str, *extra: str) -> tuple[str, ...]:
    return (
        program, "run", "--server", "{url}", "--work-dir", "{work}", "--max-jobs", "1",
        "--idle-timeout", "0", "--site", "Bench.Site", "--log-level", "WARNING", *extra,
    )  # fmt: skip


def install_package(tmp: Path) -> Path:
    """``pilot`` of a fresh virtualenv holding pilot-agent's wheel and its dependencies."""
    venv, wheels = tmp / "venv", tmp / "wheels"
    quiet = {"check": True, "capture_output": True}
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], **quiet)
    source = tmp / "src"  # a copy: setuptools writes build/ and *.egg-info into the tree
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("pilot", "checks", "server_stub"):
        shutil.copytree(REPO / name, source / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    pip = str(BIN / "pip")
    # setuptools from the venv (requirements/dev.lock), not fetched into an isolated build
    build = [pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels)]
    build.append(str(source))
    subprocess.run(build, **quiet)
    (wheel,) = wheels.glob("pilot_agent-*.whl")
    target = venv / "bin" / "python"
    subprocess.run(
        [str(BIN / "pip"), "--python", str(target), "install", "-q", "--no-deps", str(wheel)],
        **quiet,
    )
    site = Path(subprocess.run(
        [str(target), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True, capture_output=True, text=True,
    ).stdout.strip())  # fmt: skip
    for top in dependency_files():
        (site / top.name).symlink_to(top)
    return venv / "bin" / "pilot"


def dependency_files() -> set[Path]:
    """Top-level files and directories (packages, dist-info) of pilot-agent's dependencies."""
    import importlib.metadata
    import re

    found: set[Path] = set()
    todo, seen = ["pilot-agent"], set()
    while todo:
        try:
            dist = importlib.metadata.distribution(todo.pop())
        except importlib.metadata.PackageNotFoundError:
            continue  # a requirement whose marker excludes this Python
        for requirement in dist.requires or []:
            if "extra ==" in requirement:
                continue
            name = re.split(r"[ ;<>=!~\[(]", requirement, maxsplit=1)[0].lower()
            if name not in seen:
                seen.add(name)
                todo.append(name)
        if dist.metadata["Name"] == "pilot-agent":
            continue
        site = Path(str(dist.locate_file(""))).resolve()
        for file in dist.files or []:
            parts = Path(file).parts
            if parts and parts[0] not in ("..", "__pycache__") and not parts[0].endswith(".pth"):
                found.add(site / parts[0])
    return found


def variants(binary: Path | None, baseline: Path, package: str) -> list[Variant]:
    found = []
    if binary is not None:
        found.append(Variant("binary", pilot_argv(str(binary))))
        found.append(
            Variant("binary, no cpu check", pilot_argv(str(binary), "--disable-check", "cpu"))
        )
        found.append(Variant("binary, with a proxy", pilot_argv(str(binary)), proxy=True))
    found.append(Variant("package", pilot_argv(package)))
    found.append(Variant("package, no cpu check", pilot_argv(package, "--disable-check", "cpu")))
    found.append(Variant("package, with a proxy", pilot_argv(package), proxy=True))
    found.append(Variant("baseline curl+tar", ("sh", str(baseline), "{url}", "{work}", "{res}")))
    return found


def one_run(variant: Variant, url: str, tmp: Path, index: int) -> float:
    marker = tmp / f"marker-{index}"
    work = tmp / f"work-{index}"
    submit(url, tmp, marker)
    values = {"url": url, "work": str(work), "res": json.dumps(RESOURCES)}
    argv = [part.format(**values) for part in variant.argv]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PILOT_", "X509_USER_PROXY"))}
    if variant.proxy:
        env["X509_USER_PROXY"] = str(tmp / "x509up")
    start = time.time()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    if done.returncode != 0 or not marker.is_file():
        raise SystemExit(f"{variant.name} failed ({done.returncode}): {done.stderr[-2000:]}")
    return float(marker.read_text().strip()) - start


def measure(runs: int, binary: Path | None) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as name:
        tmp = Path(name)
        baseline = tmp / "baseline.sh"
        baseline.write_text(BASELINE_SH)
        package = str(install_package(tmp))
        make_proxy(tmp)
        stub, url = start_stub(tmp)
        try:
            index = 0
            for _ in range(runs):
                for variant in variants(binary, baseline, package):
                    index += 1
                    results.setdefault(variant.name, []).append(one_run(variant, url, tmp, index))
        finally:
            stub.terminate()
            stub.wait(timeout=10)
    return results


def report(results: dict[str, list[float]], binary: Path | None) -> None:
    median = {name: statistics.median(values) for name, values in results.items()}
    print(f"{'variant':<24} {'median':>8} {'min':>8}   (s from spawn to first payload)")
    for name, values in results.items():
        print(f"{name:<24} {median[name]:8.3f} {min(values):8.3f}")
    base = median["baseline curl+tar"]
    print()
    for name in ("binary", "package"):
        if name in median:
            print(f"{name} / baseline: {median[name] / base:6.1f}x")
    if "binary" in median:
        print(f"binary / package:  {median['binary'] / median['package']:6.2f}x")
        size = binary.stat().st_size if binary else 0
        print(f"binary size: {size / 2**20:.1f} MiB ({size} bytes)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=5, help="runs per variant (default 5)")
    parser.add_argument("--binary", type=Path, default=REPO / "dist" / "pilot")
    args = parser.parse_args(argv)
    for tool in ("curl", "tar"):
        if shutil.which(tool) is None:
            print(f"startup bench needs {tool} for the baseline", file=sys.stderr)
            return 2
    binary: Path | None = args.binary.resolve()
    if binary is None or not binary.is_file():
        print(f"no {args.binary}: measuring without it (make binary)", file=sys.stderr)
        binary = None
    report(measure(args.n, binary), binary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
