#!/usr/bin/env bash
# Install Debian's SLURM, munge and MariaDB packages for the local single-node cluster.
# Idempotent: exits at once when every package is already installed.
set -euo pipefail

PACKAGES=(slurm-wlm munge mariadb-server slurmdbd)

missing=()
for pkg in "${PACKAGES[@]}"; do
    # dpkg-query's status, not `command -v`, because slurm-wlm is a metapackage without a binary.
    if [[ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null)" != "install ok installed" ]]; then
        missing+=("$pkg")
    fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
    echo "install.sh: already installed: ${PACKAGES[*]}"
    exit 0
fi

if [[ $EUID -ne 0 ]]; then
    echo "install.sh: need root to install: ${missing[*]} (run with sudo)" >&2
    exit 1
fi

echo "install.sh: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
# policy-rc.d stops the maintainer scripts from starting system-wide daemons: up.sh runs its own
# private munged/mariadbd/slurm* with their own state folders, and on machines without systemd the
# init scripts would only fail or leave stray processes behind.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    created_policy=1
fi
trap '[[ $created_policy -eq 1 ]] && rm -f "$policy"' EXIT
apt-get install -y -q --no-install-recommends "${missing[@]}"
echo "install.sh: done"
