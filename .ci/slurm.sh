#!/usr/bin/env bash
# CI step: install Debian's SLURM and bring up the local single-node cluster for the integration
# tests. `.ci/run` calls this, then sources "$HCLI_SLURM_STATE/env.sh" (default /tmp/hcli-slurm).
# Fails loudly, with every daemon log, when the cluster cannot come up: the slurm-marked tests
# must run in CI, never be skipped.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOCAL="$REPO/slurm_templates/local"
STATE_DIR="${HCLI_SLURM_STATE:-/tmp/hcli-slurm}"

# Packages and the daemons need root (slurmd starts jobs as the submitting user); CI runners
# usually offer passwordless sudo.
SUDO=()
if [[ $EUID -ne 0 ]]; then
    command -v sudo >/dev/null || { echo "slurm.sh: need root or sudo" >&2; exit 1; }
    SUDO=(sudo -n)
fi

dump_logs() {
    echo "=================== LOCAL SLURM DID NOT COME UP ===================" >&2
    for f in "$STATE_DIR"/log/*.log; do
        [[ -f $f ]] || continue
        echo "------------------- $f -------------------" >&2
        "${SUDO[@]}" tail -n 200 "$f" >&2 || true
    done
}

start=$SECONDS
"${SUDO[@]}" bash "$LOCAL/install.sh"
echo "slurm.sh: install.sh took $((SECONDS - start)) s"

start=$SECONDS
if ! "${SUDO[@]}" bash "$LOCAL/up.sh" "$STATE_DIR"; then
    dump_logs
    exit 1
fi
echo "slurm.sh: up.sh took $((SECONDS - start)) s"

# A job through the whole path (schedule, run, account) before any test relies on it.
# shellcheck source=/dev/null
source "$STATE_DIR/env.sh"
probe_dir="$(mktemp -d)"
job="$(cd "$probe_dir" && sbatch --parsable -p local -o /dev/null --wrap true)" || {
    dump_logs
    echo "slurm.sh: sbatch failed" >&2
    exit 1
}
# Polled here rather than `sbatch --wait`, which sleeps up to 10 s between its own checks.
state=""
for _ in $(seq 1 240); do
    state="$(sacct -n -X -P -j "$job" -o State 2>/dev/null | head -n 1)"
    [[ $state == COMPLETED || $state == FAILED || $state == CANCELLED* ]] && break
    sleep 0.5
done
rm -rf "$probe_dir"
if [[ $state != COMPLETED ]]; then
    dump_logs
    echo "slurm.sh: trivial job $job did not reach COMPLETED in sacct (got '$state')" >&2
    exit 1
fi
echo "slurm.sh: local SLURM ready; source $STATE_DIR/env.sh"
