#!/usr/bin/env bash
# Stop the local cluster started by up.sh: slurmctld, slurmd, slurmdbd, MariaDB, munged.
#
#   down.sh [STATE_DIR]        default: $HCLI_SLURM_STATE or /tmp/hcli-slurm
#
# Running jobs are cancelled first (their slurmstepd would otherwise outlive slurmd); pending
# jobs stay queued in the saved state and run after the next up.sh. Daemons are found by their
# pid files only, so nothing outside STATE_DIR is touched. The state (jobs, accounting database,
# munge key) is kept; delete STATE_DIR for a fresh cluster.
set -euo pipefail

STATE_DIR="${1:-${HCLI_SLURM_STATE:-/tmp/hcli-slurm}}"
if [[ ! -d $STATE_DIR ]]; then
    echo "down.sh: nothing to stop ($STATE_DIR does not exist)"
    exit 0
fi
STATE_DIR="$(cd "$STATE_DIR" && pwd)"
RUN="$STATE_DIR/run"
export SLURM_CONF="$STATE_DIR/etc/slurm.conf"

pid_of() {
    local name=$1 pidfile=$2 pid
    [[ -r $pidfile ]] || return 1
    pid="$(tr -dc '0-9' <"$pidfile")"
    [[ -n $pid && -r /proc/$pid/comm && "$(cat "/proc/$pid/comm")" == "$name" ]] || return 1
    echo "$pid"
}

stop_pid() {
    local name=$1 pid=$2 waited=0
    kill -TERM "$pid" 2>/dev/null || return 0
    while kill -0 "$pid" 2>/dev/null; do
        if ((waited >= 150)); then
            echo "down.sh: $name ($pid) ignored SIGTERM for 15 s, killing it" >&2
            kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
    echo "down.sh: stopped $name ($pid)"
}

stop() {
    local pid
    if pid="$(pid_of "$1" "$2")"; then
        stop_pid "$1" "$pid"
    fi
    rm -f "$2"
}

# slurmstepd processes of this cluster carry its SLURM_CONF in their environment (inherited from
# slurmd); that is how they are told apart from another cluster's on the same machine.
our_stepds() {
    local p
    for p in $(pgrep -x slurmstepd || true); do
        if tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qx "SLURM_CONF=$SLURM_CONF"; then
            echo "$p"
        fi
    done
}

if pid_of slurmctld "$RUN/slurmctld.pid" >/dev/null && [[ -n "$(our_stepds)" ]]; then
    timeout 10 scancel --state=RUNNING --partition=local 2>/dev/null || true
    for _ in $(seq 1 100); do
        [[ -z "$(our_stepds)" ]] && break
        sleep 0.1
    done
fi

stop slurmctld "$RUN/slurmctld.pid"
stop slurmd "$RUN/slurmd.pid"
for p in $(our_stepds); do
    stop_pid slurmstepd "$p"
done
stop slurmdbd "$RUN/slurmdbd.pid"
stop mariadbd "$RUN/mariadbd.pid"
stop munged "$RUN/munged.pid"
echo "down.sh: cluster in $STATE_DIR is down"
