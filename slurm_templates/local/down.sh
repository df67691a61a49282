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

# A zombie counts as gone: it has exited and only waits for init to reap it (which can take a
# second in containers), and `kill -0` would still report it.
running() {
    local state
    state="$(awk '/^State:/ {print $2}' "/proc/$1/status" 2>/dev/null)"
    [[ -n $state && $state != Z ]]
}

pid_of() {
    local name=$1 pidfile=$2 pid
    [[ -r $pidfile ]] || return 1
    pid="$(tr -dc '0-9' <"$pidfile")"
    [[ -n $pid ]] && running "$pid" || return 1
    [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$name" ]] || return 1
    echo "$pid"
}

stopped=()

stop_pid() {
    local name=$1 pid=$2 waited=0
    stopped+=("$pid")
    kill -TERM "$pid" 2>/dev/null || return 0
    while running "$pid"; do
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
        if tr '\0' '\n' 2>/dev/null <"/proc/$p/environ" | grep -qx "SLURM_CONF=$SLURM_CONF"; then
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
# Let init reap the exited daemons, so that nothing of ours is left in the process table.
for _ in $(seq 1 50); do
    left=0
    for pid in "${stopped[@]}"; do
        [[ -e /proc/$pid ]] && left=1
    done
    ((left == 0)) && break
    sleep 0.1
done
echo "down.sh: cluster in $STATE_DIR is down"
