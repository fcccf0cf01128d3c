#!/usr/bin/env bash
# Installs the Debian packages that parts of the test suite need (Slurm, munge,
# Grid Engine, grid proxy tools, bubblewrap, debootstrap, curl, and headless Chromium
# with its WebDriver for the monitor's browser tests). Runs apt-get only as root and
# only when something is missing; elsewhere it says what is missing and the tests
# that need it skip with a message naming it. A package the mirror does not have is
# named and left out (its tests skip, or fail with CI=true); any other apt failure fails.
# One run at a time (two checkouts' make test): the second waits for the first, and each
# waits up to 10 min for a foreign apt/dpkg (unattended-upgrades) to let go of its locks.
# SYSTEM_DEPS_LOCK and SYSTEM_DEPS_POLICY_RC_D move the lock and policy-rc.d (for tests).
set -u
pkgs=(slurm-wlm munge globus-proxy-utils voms-clients bubblewrap debootstrap curl openssl
      mariadb-server mariadb-client swig libmariadb-dev libssl-dev pkg-config gcc
      python3.11-venv python3-gfal2
      gridengine-master gridengine-exec gridengine-client mailutils
      chromium chromium-driver)
# mailutils: satisfies Grid Engine's mailx dependency without a mail daemon
find_missing() {
    missing=()
    for p in "${pkgs[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
}
find_missing
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "system-deps: not root, not installing: ${missing[*]} (tests needing them will skip)" >&2
    exit 0
fi
lock=${SYSTEM_DEPS_LOCK:-/run/lock/pilot-agent-system-deps.lock}
mkdir -p "$(dirname "$lock")" && exec 9>>"$lock" || exit 1
if ! flock -n 9; then
    echo "system-deps: another run is installing; waiting for it" >&2
    flock -w 1800 9 || { echo "system-deps: gave up waiting for the other run" >&2; exit 1; }
    find_missing
    [ ${#missing[@]} -eq 0 ] && exit 0
fi
apt_get() { apt-get -o DPkg::Lock::Timeout=600 "$@"; }
# apt-get update takes the lists lock, which DPkg::Lock::Timeout does not cover: retry
updated=0
for attempt in 1 2 3 4 5 6; do
    apt_get update -qq >/dev/null && { updated=1; break; }
    [ $attempt = 6 ] || { echo "system-deps: apt-get update failed; retrying in 20 s" >&2; sleep 20; }
done
[ $updated = 1 ] || echo "system-deps: apt-get update failed; using the package lists there are" >&2
# what the mirror has no candidate for cannot be installed: name it, install the rest
wanted=(); absent=()
for p in "${missing[@]}"; do
    candidate=$(apt-cache policy "$p" 2>/dev/null | sed -n 's/^ *Candidate: *//p')
    if [ -n "$candidate" ] && [ "$candidate" != "(none)" ]; then wanted+=("$p"); else absent+=("$p"); fi
done
[ ${#absent[@]} -eq 0 ] || echo "system-deps: not in the package lists, not installing: ${absent[*]} (tests needing them will skip)" >&2
[ ${#wanted[@]} -eq 0 ] && exit 0
echo "system-deps: installing ${wanted[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# Grid Engine's packages ask for a cell and a master host: answer them beforehand (the
# tests start their own private qmaster and execd, see tests/sge/cluster.py).
if printf '%s\n' "${wanted[@]}" | grep -q '^gridengine'; then
    host=$(hostname)
    for p in gridengine-common gridengine-client gridengine-master gridengine-exec; do
        printf '%s shared/gridengineconfig boolean true\n' "$p"
        printf '%s shared/gridenginecell string default\n' "$p"
        printf '%s shared/gridenginemaster string %s\n' "$p" "$host"
    done | debconf-set-selections
fi
# Debian starts services on install; our tests run their own private instances,
# so forbid starting any service while installing (policy-rc.d exit 101). Ours carries a
# mark, so that one left by a run killed with -9 is taken for ours and removed.
policy=${SYSTEM_DEPS_POLICY_RC_D:-/usr/sbin/policy-rc.d}
mark="# pilot-agent system-deps"
ours=1
[ -e "$policy" ] && ! grep -qx "$mark" "$policy" && ours=0
if [ $ours = 1 ]; then
    printf '#!/bin/sh\n%s\nexit 101\n' "$mark" >"$policy" && chmod +x "$policy"
    trap 'rm -f "$policy"' EXIT
    trap 'exit 130' INT TERM
fi
apt_get install -y -qq --no-install-recommends "${wanted[@]}" >/dev/null || {
    echo "system-deps: apt-get install failed" >&2
    exit 1
}
exit 0
