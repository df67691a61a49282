#!/usr/bin/env bash
# Bring up hcli's single-node SLURM on loopback: munged, MariaDB, slurmdbd, slurmctld, slurmd.
#
#   up.sh [STATE_DIR]          default: $HCLI_SLURM_STATE or /tmp/hcli-slurm
#   source STATE_DIR/env.sh    then sinfo, sbatch, sacct, hcli submit --cluster ... use it
#
# Idempotent: when the cluster in STATE_DIR is already answering, says so and exits 0; when only
# part of it runs (a crash, a reboot of one daemon), stops the leftovers and starts it all again,
# keeping the job state and the accounting database. Ports: HCLI_SLURM_PORT_BASE (default 16817)
# for slurmctld, +1 slurmd, +2 slurmdbd, +3 MariaDB, all bound to 127.0.0.1.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
STATE_DIR="${1:-${HCLI_SLURM_STATE:-/tmp/hcli-slurm}}"
mkdir -p "$STATE_DIR"
STATE_DIR="$(cd "$STATE_DIR" && pwd)"
PORT_BASE="${HCLI_SLURM_PORT_BASE:-16817}"
CTLD_PORT=$PORT_BASE
SLURMD_PORT=$((PORT_BASE + 1))
DBD_PORT=$((PORT_BASE + 2))
DB_PORT=$((PORT_BASE + 3))
CLUSTER=hcli
ACCOUNT=local
MAX_ARRAY_SIZE=1001
DB_NAME=slurm_acct_db
DB_USER=slurm
RUN_USER="$(id -un)"
HOST="$(hostname -s)"

ETC="$STATE_DIR/etc"
RUN="$STATE_DIR/run"
LOG="$STATE_DIR/log"
DB_SOCK="$RUN/mariadb.sock"
MUNGE_SOCK="$STATE_DIR/munge/munge.socket"
export SLURM_CONF="$ETC/slurm.conf"

say() { echo "up.sh: $*"; }

fail() {
    echo "up.sh: FAILED: $*" >&2
    for f in "$LOG"/*.log; do
        [[ -s $f ]] || continue
        echo "----- last lines of $f -----" >&2
        tail -n 30 "$f" >&2
    done
    exit 1
}

# A pid file is trusted only when its process still runs the expected program, so a recycled pid
# never counts as a running daemon.
alive() {
    local name=$1 pidfile=$2 pid
    [[ -r $pidfile ]] || return 1
    pid="$(tr -dc '0-9' <"$pidfile")"
    [[ -n $pid ]] || return 1
    # A zombie (exited, not yet reaped) is not a running daemon.
    [[ "$(awk '/^State:/ {print $2}' "/proc/$pid/status" 2>/dev/null)" =~ ^[^Z]$ ]] || return 1
    [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$name" ]]
}

wait_for() {
    local what=$1 seconds=$2
    shift 2
    local deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || fail "$what not ready after ${seconds}s"
        sleep 0.3
    done
}

daemons_alive() {
    alive munged "$RUN/munged.pid" && alive mariadbd "$RUN/mariadbd.pid" &&
        alive slurmdbd "$RUN/slurmdbd.pid" && alive slurmctld "$RUN/slurmctld.pid" &&
        alive slurmd "$RUN/slurmd.pid"
}

node_ready() {
    local state
    state="$(timeout 10 sinfo -h -N -n "$HOST" -o %T 2>/dev/null)" || return 1
    # Recovered jobs may already occupy the node; anything but down/drain/unknown accepts jobs.
    [[ $state =~ ^(idle|mixed|allocated|completing)$ ]]
}

write_env() {
    cat >"$STATE_DIR/env.sh" <<EOF
# Written by slurm_templates/local/up.sh: \`source $STATE_DIR/env.sh\` to use the local cluster.
export SLURM_CONF="$SLURM_CONF"
export HCLI_SLURM_STATE="$STATE_DIR"
EOF
}

usage_hint() {
    cat <<EOF
up.sh: cluster '$CLUSTER' is up (node $HOST, partition 'local', MaxArraySize=$MAX_ARRAY_SIZE)
  source $STATE_DIR/env.sh
  sinfo; sbatch -p local --wrap 'hostname'; squeue; sacct
  stop with: $HERE/down.sh $STATE_DIR
EOF
}

if daemons_alive && node_ready; then
    write_env
    say "already up in $STATE_DIR"
    usage_hint
    exit 0
fi

for bin in munged mungekey mariadbd mariadb-install-db mariadb mariadb-admin slurmdbd slurmctld \
    slurmd sinfo sacctmgr sacct; do
    command -v "$bin" >/dev/null || fail "'$bin' not found: run $HERE/install.sh first"
done

# Partial state (one daemon died): clear it so every daemon starts from a known point.
if [[ -d $RUN ]]; then
    "$HERE/down.sh" "$STATE_DIR" >/dev/null
fi

# The daemons bind to the address the host name resolves to (NoInAddrAny): it must be loopback so
# nothing listens on a network interface.
host_addrs="$(getent ahostsv4 "$(hostname)" | awk '{print $1}' | sort -u | tr '\n' ' ')"
for addr in $host_addrs; do
    [[ $addr == 127.* ]] ||
        fail "host name $(hostname) resolves to $addr, not loopback; the daemons would listen on" \
            "the network. Map it to loopback first, e.g. echo '127.0.1.1 $(hostname)' >>/etc/hosts"
done
[[ -n $host_addrs ]] || fail "host name $(hostname) does not resolve; add it to /etc/hosts"

for port in "$CTLD_PORT" "$SLURMD_PORT" "$DBD_PORT" "$DB_PORT"; do
    if ss -Hltn "sport = :$port" | grep -q .; then
        fail "port $port is taken by another program; set HCLI_SLURM_PORT_BASE to a free range"
    fi
done

mkdir -p "$ETC" "$RUN" "$LOG" "$STATE_DIR/munge" "$STATE_DIR/ctld" "$STATE_DIR/spool/slurmd" \
    "$STATE_DIR/mysql"
# munged refuses sockets and keys in folders others can write to.
chmod 700 "$STATE_DIR/munge"
chmod 755 "$STATE_DIR" "$RUN"

# --- configuration --------------------------------------------------------------------------
CPUS="$(nproc)"
mem_mb=$(($(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024))
# Headroom: slurmd drains a node whose RealMemory exceeds what it measures itself.
MEM=$((mem_mb * 9 / 10))
if [[ ! -s $ETC/dbpass ]]; then
    (umask 077 && head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' >"$ETC/dbpass")
fi
DB_PASS="$(cat "$ETC/dbpass")"

render() {
    sed -e "s|@CLUSTER@|$CLUSTER|g" -e "s|@HOST@|$HOST|g" -e "s|@USER@|$RUN_USER|g" \
        -e "s|@CPUS@|$CPUS|g" -e "s|@MEM@|$MEM|g" -e "s|@STATE_DIR@|$STATE_DIR|g" \
        -e "s|@CTLD_PORT@|$CTLD_PORT|g" -e "s|@SLURMD_PORT@|$SLURMD_PORT|g" \
        -e "s|@DBD_PORT@|$DBD_PORT|g" -e "s|@DB_PORT@|$DB_PORT|g" -e "s|@DB_USER@|$DB_USER|g" \
        -e "s|@DB_PASS@|$DB_PASS|g" -e "s|@DB_NAME@|$DB_NAME|g" \
        -e "s|@MAX_ARRAY_SIZE@|$MAX_ARRAY_SIZE|g" "$1"
}
render "$HERE/slurm.conf.in" >"$ETC/slurm.conf"
(umask 077 && render "$HERE/slurmdbd.conf.in" >"$ETC/slurmdbd.conf")
chmod 600 "$ETC/slurmdbd.conf"
if grep -q '@[A-Z_]*@' "$ETC/slurm.conf" "$ETC/slurmdbd.conf"; then
    fail "unsubstituted placeholder in $ETC: $(grep -ho '@[A-Z_]*@' "$ETC"/*.conf | sort -u)"
fi

# --- munge ----------------------------------------------------------------------------------
if [[ ! -s $STATE_DIR/munge/munge.key ]]; then
    mungekey --create --keyfile="$STATE_DIR/munge/munge.key" >/dev/null
fi
chmod 600 "$STATE_DIR/munge/munge.key"
say "starting munged"
munged --socket="$MUNGE_SOCK" --key-file="$STATE_DIR/munge/munge.key" \
    --pid-file="$RUN/munged.pid" --log-file="$LOG/munged.log" \
    --seed-file="$STATE_DIR/munge/munged.seed" --force 2>>"$LOG/munged.log" ||
    fail "munged did not start"
wait_for "munged" 10 bash -c "munge -S '$MUNGE_SOCK' -n | unmunge -S '$MUNGE_SOCK'"

# --- MariaDB for slurmdbd -------------------------------------------------------------------
if [[ ! -d $STATE_DIR/mysql/data/mysql ]]; then
    say "initialising MariaDB in $STATE_DIR/mysql/data"
    mariadb-install-db --no-defaults --user="$RUN_USER" --datadir="$STATE_DIR/mysql/data" \
        --auth-root-authentication-method=socket --skip-test-db >"$LOG/mariadb-install.log" 2>&1 ||
        fail "mariadb-install-db failed (see $LOG/mariadb-install.log)"
fi
say "starting MariaDB on 127.0.0.1:$DB_PORT"
# --no-defaults: the system's /etc/mysql config would add its own socket, datadir and logs.
setsid nohup mariadbd --no-defaults --user="$RUN_USER" --datadir="$STATE_DIR/mysql/data" \
    --socket="$DB_SOCK" --port="$DB_PORT" --bind-address=127.0.0.1 --skip-name-resolve \
    --pid-file="$RUN/mariadbd.pid" --log-error="$LOG/mariadb.log" \
    --innodb-buffer-pool-size=64M >/dev/null 2>&1 </dev/null &
wait_for "MariaDB" 60 mariadb-admin --no-defaults -S "$DB_SOCK" -u "$RUN_USER" ping
mariadb --no-defaults -S "$DB_SOCK" -u "$RUN_USER" <<SQL || fail "could not create the slurmdbd user"
CREATE USER IF NOT EXISTS '$DB_USER'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
ALTER USER '$DB_USER'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON \`$DB_NAME\`.* TO '$DB_USER'@'127.0.0.1';
FLUSH PRIVILEGES;
SQL

# --- slurmdbd and the accounting associations -----------------------------------------------
say "starting slurmdbd on 127.0.0.1:$DBD_PORT"
slurmdbd || fail "slurmdbd did not start"
wait_for "slurmdbd" 60 timeout 5 sacctmgr -n show cluster
# The cluster must be known to slurmdbd before slurmctld starts, or accounting stays off until a
# slurmctld restart.
if [[ -z "$(sacctmgr -n -P show cluster "$CLUSTER" format=cluster)" ]]; then
    sacctmgr -i add cluster "$CLUSTER" >/dev/null || fail "sacctmgr add cluster failed"
fi
if [[ -z "$(sacctmgr -n -P show account "$ACCOUNT" format=account)" ]]; then
    sacctmgr -i add account "$ACCOUNT" Cluster="$CLUSTER" Description="hcli local" \
        Organization=hcli >/dev/null || fail "sacctmgr add account failed"
fi
# root and, under sudo, the invoking user: the users who submit on this single-user cluster.
assoc_users=("$RUN_USER" root)
[[ -n ${SUDO_USER:-} ]] && assoc_users+=("$SUDO_USER")
for u in "${assoc_users[@]}"; do
    if [[ -z "$(sacctmgr -n -P show assoc where user="$u" account="$ACCOUNT" format=user)" ]]; then
        sacctmgr -i add user "$u" Account="$ACCOUNT" DefaultAccount="$ACCOUNT" >/dev/null ||
            fail "sacctmgr add user $u failed"
    fi
done

# --- slurmctld and slurmd -------------------------------------------------------------------
say "starting slurmctld and slurmd"
slurmctld || fail "slurmctld did not start"
wait_for "slurmctld" 30 timeout 5 scontrol ping
slurmd || fail "slurmd did not start"
wait_for "node $HOST (sinfo)" 60 node_ready
wait_for "sacct" 30 timeout 10 sacct -n -X -S now-1minutes

write_env
usage_hint
