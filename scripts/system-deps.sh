#!/usr/bin/env bash
# Installs the Debian packages that parts of the test suite need (Slurm, munge,
# Grid Engine, grid proxy tools, bubblewrap, debootstrap, curl). Runs apt-get only as root and
# only when something is missing; elsewhere it says what is missing and the tests
# that need it skip with a message naming it.
set -u
pkgs=(slurm-wlm munge globus-proxy-utils voms-clients bubblewrap debootstrap curl openssl
      mariadb-server mariadb-client swig libmariadb-dev libssl-dev pkg-config gcc
      python3.11-venv python3-gfal2
      gridengine-master gridengine-exec gridengine-client mailutils)
# mailutils: satisfies Grid Engine's mailx dependency without a mail daemon
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "system-deps: not root, not installing: ${missing[*]} (tests needing them will skip)" >&2
    exit 0
fi
echo "system-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# Grid Engine's packages ask for a cell and a master host: answer them beforehand (the
# tests start their own private qmaster and execd, see tests/sge/cluster.py).
if printf '%s\n' "${missing[@]}" | grep -q '^gridengine'; then
    host=$(hostname)
    for p in gridengine-common gridengine-client gridengine-master gridengine-exec; do
        printf '%s shared/gridengineconfig boolean true\n' "$p"
        printf '%s shared/gridenginecell string default\n' "$p"
        printf '%s shared/gridenginemaster string %s\n' "$p" "$host"
    done | debconf-set-selections
fi
# Debian starts services on install; our tests run their own private instances,
# so forbid starting any service while installing (policy-rc.d exit 101).
policy=/usr/sbin/policy-rc.d
had_policy=0; [ -e "$policy" ] && had_policy=1
[ $had_policy = 1 ] || { printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod +x "$policy"; }
rc=0
apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || rc=1
[ $had_policy = 1 ] || rm -f "$policy"
[ $rc = 0 ] || { echo "system-deps: apt-get install failed" >&2; exit 1; }
exit 0
