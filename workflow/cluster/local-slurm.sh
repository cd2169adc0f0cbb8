#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for testing workflow/profiles/slurm (tests/test_slurm.py).
# It is also a recipe: what the profile expects from a cluster is what this sets up.
#
#   sudo workflow/cluster/local-slurm.sh up       # install (Debian/Ubuntu apt) if needed, configure, start
#   sudo workflow/cluster/local-slurm.sh status   # daemons, partitions, node; exit 0 only if all are up
#   sudo workflow/cluster/local-slurm.sh down     # cancel every job, stop every daemon this started
#
# What the profile needs, and why:
#   * munge: SLURM's authentication between commands and daemons (the documented default).
#   * slurmdbd + MariaDB (job accounting): snakemake-executor-plugin-slurm checks slurm_account
#     with `sacctmgr` (or guesses it from `sacct`), and polls job states with `sacct` unless told
#     `slurm-status-command: squeue` (the profile does, see its comments; squeue needs
#     MinJobAge >= 120 s, else the plugin goes back to sacct). Without a database `sacct` fails
#     and, polling with it, the plugin would wait forever. Production clusters have slurmdbd;
#     so does this one, and the test reads every job back from sacct.
#   * partitions `cpu` (default) and `gpu`: the profile's default-resources and set-resources
#     name them. The node declares fake GPUs as a GRES (gres.conf AutoDetect=off; device files
#     that are /dev/null underneath, since slurmd counts a GPU only with a File): sbatch
#     --gres=gpu:1 is accepted, scheduled and shown by sacct/scontrol, but no CUDA device is
#     behind it, so `ride --device auto` runs on the CPU.
#   * account `ride` with the calling user (and root) in it; AccountingStorageEnforce=associations
#     rejects jobs of unknown accounts, as production clusters do.
# No systemd is needed: each daemon is started directly and found again through its pid file.
# Tested with Debian 12 (bookworm) packages: slurm-wlm 22.05.8, munge 0.5.15, MariaDB 10.11.
set -euo pipefail

CLUSTER=ride-local
ACCOUNT=ride
NODE=$(hostname -s)
CPUS=${RIDE_SLURM_CPUS:-$(nproc)}
# Leave 1 GB to the system; SelectTypeParameters=CR_Core_Memory makes --mem a real limit.
MEM_MB=${RIDE_SLURM_MEM_MB:-$(($(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) - 1024))}
GPUS=${RIDE_SLURM_GPUS:-$CPUS}   # fake ones: as many as CPUs, so GPU jobs are not the bottleneck
USERS="root ${SUDO_USER:-$(id -un)}"
ETC=/etc/slurm
RUN=/run/ride-slurm
LOG=/var/log/slurm
SPOOL=/var/lib/slurm
DB_PASS=ride-local-only   # the database listens on the local socket only; a test cluster
PACKAGES=(slurm-wlm slurmdbd slurm-client munge mariadb-server)

log() { echo "local-slurm: $*" >&2; }
die() { log "error: $*"; exit 1; }

pidfile() {  # each daemon writes its own pid file, where its user may write
    case $1 in
        munged) echo /run/munge/munged.pid ;;
        mariadb) echo /run/mysqld/mariadbd.pid ;;
        *) echo "$RUN/$1.pid" ;;
    esac
}

running() {  # running NAME: its pid file names a live process
    local pid
    pid=$(cat "$(pidfile "$1")" 2>/dev/null) || return 1
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...: poll until COMMAND succeeds
    local limit=$1 what=$2
    shift 2
    for _ in $(seq "$((limit * 2))"); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.5
    done
    die "$what did not come up within ${limit}s (logs in $LOG)"
}

install_packages() {
    local missing=()
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return
    command -v apt-get >/dev/null || die "install ${missing[*]} (SLURM 22.05+, munge, MariaDB) with your package manager"
    log "apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

write_config() {
    mkdir -p "$ETC" "$RUN" "$LOG" "$SPOOL/slurmctld" "$SPOOL/slurmd" /run/munge /run/mysqld
    chown slurm:slurm "$RUN" "$LOG" "$SPOOL" "$SPOOL/slurmctld"
    chown munge:munge /run/munge
    chown mysql:mysql /run/mysqld
    cat >"$ETC/slurm.conf" <<EOF
# Written by workflow/cluster/local-slurm.sh: one node ($NODE) that is its own controller.
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=slurm
AuthType=auth/munge
StateSaveLocation=$SPOOL/slurmctld
SlurmdSpoolDir=$SPOOL/slurmd
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
# No cgroups (containers rarely delegate them): processes are tracked through /proc.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Finished jobs stay visible to squeue/scontrol for 5 min (the plugin's squeue mode needs >= 120 s).
MinJobAge=300
KillWait=10
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageEnforce=associations
AccountingStorageTRES=gres/gpu
# The plugin names each job's rule and wildcards in --comment; keep it in sacct too.
AccountingStoreFlags=job_comment
JobAcctGatherType=jobacct_gather/linux
JobCompType=jobcomp/none
GresTypes=gpu
# Trust the node line below over slurmd's probe (RIDE_SLURM_CPUS may differ from the hardware).
SlurmdParameters=config_overrides
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB Gres=gpu:$GPUS State=UNKNOWN
PartitionName=cpu Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$NODE MaxTime=INFINITE State=UP
EOF
    cat >"$ETC/gres.conf" <<EOF
AutoDetect=off
NodeName=$NODE Name=gpu File=$RUN/fake-gpu/nvidia[0-$((GPUS - 1))]
EOF
    cat >"$ETC/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=slurm
PidFile=$RUN/slurmdbd.pid
LogFile=$LOG/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
    chown slurm:slurm "$ETC/slurmdbd.conf"
    chmod 600 "$ETC/slurmdbd.conf"   # slurmdbd refuses a readable password file
    chmod 644 "$ETC/slurm.conf" "$ETC/gres.conf"
    # The fake GPUs: device files that behave as /dev/null (char 1:3), one per GPU.
    mkdir -p "$RUN/fake-gpu"
    for i in $(seq 0 $((GPUS - 1))); do
        [ -c "$RUN/fake-gpu/nvidia$i" ] || mknod "$RUN/fake-gpu/nvidia$i" c 1 3
    done
}

start_munge() {
    [ -s /etc/munge/munge.key ] || { mungekey --create --keyfile=/etc/munge/munge.key && chown munge:munge /etc/munge/munge.key; }
    running munged || runuser -u munge -- /usr/sbin/munged
    wait_for 20 munge sh -c 'munge -n | unmunge'
}

start_mariadb() {
    if ! running mariadb; then
        # Native AIO is off: sandboxed kernels (gVisor) do not implement io_setup.
        nohup /usr/sbin/mariadbd --user=mysql --pid-file="$(pidfile mariadb)" --socket=/run/mysqld/mysqld.sock \
            --skip-networking --innodb-use-native-aio=0 --log-error="$LOG/mariadb.log" >/dev/null 2>&1 &
    fi
    wait_for 60 MariaDB mariadb-admin --socket=/run/mysqld/mysqld.sock ping
    mariadb --socket=/run/mysqld/mysqld.sock <<EOF
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
EOF
}

start_slurmdbd() {
    running slurmdbd || slurmdbd
    wait_for 60 slurmdbd sacctmgr -n list cluster
}

add_associations() {  # idempotent: sacctmgr -i add of an existing entity only says "Nothing new added"
    sacctmgr -i add cluster "$CLUSTER" >/dev/null || true
    sacctmgr -i add account "$ACCOUNT" cluster="$CLUSTER" description="RIDE workflow tests" organization=ride >/dev/null || true
    for u in $USERS; do
        sacctmgr -i add user "$u" account="$ACCOUNT" cluster="$CLUSTER" defaultaccount="$ACCOUNT" >/dev/null || true
    done
    sacctmgr -n -p list assoc cluster="$CLUSTER" account="$ACCOUNT" format=user | grep -q . ||
        die "no association for account $ACCOUNT (sacctmgr list assoc)"
}

node_state() { sinfo -h -N -n "$NODE" -o %T | head -1; }

start_slurm() {
    running slurmctld || slurmctld
    wait_for 60 slurmctld scontrol ping
    running slurmd || slurmd
    wait_for 60 "slurmd on $NODE" sh -c "sinfo -h -N -n $NODE -o %T | grep -qvE 'unk|not_resp|\\*'"
    # A drain reason saved by an earlier run (e.g. a failed registration) outlives a restart.
    case $(node_state) in
        *down* | *drain* | *inval*) scontrol update nodename="$NODE" state=resume ;;
    esac
    wait_for 30 "node $NODE" sh -c "sinfo -h -N -n $NODE -o %T | grep -qE '^(idle|mixed|allocated)$'"
}

cmd_up() {
    [ "$(id -u)" -eq 0 ] || die "run as root (it installs packages and starts system daemons)"
    install_packages
    write_config
    start_munge
    start_mariadb
    start_slurmdbd
    add_associations
    start_slurm
    cmd_status
}

stop() {  # stop NAME: TERM its process, wait up to 30 s, then KILL
    local pid
    running "$1" || { rm -f "$(pidfile "$1")"; return 0; }
    pid=$(cat "$(pidfile "$1")")
    kill "$pid"
    for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    rm -f "$(pidfile "$1")"
    log "stopped $1 ($pid)"
}

cmd_down() {
    if running slurmctld; then
        squeue -h -o %i | xargs -r scancel || true
        # Job steps (slurmstepd) end with their jobs, which slurmd must still be up to see.
        for _ in $(seq 60); do [ -z "$(squeue -h -o %i)" ] && break; sleep 0.5; done
    fi
    # The daemons go in reverse order of start.
    for d in slurmd slurmctld slurmdbd mariadb munged; do stop "$d"; done
    rm -rf "$RUN/fake-gpu"
}

cmd_status() {
    local ok=0
    for d in munged mariadb slurmdbd slurmctld slurmd; do
        if running "$d"; then echo "$d: running (pid $(cat "$(pidfile "$d")"))"; else echo "$d: stopped"; ok=1; fi
    done
    if [ $ok -eq 0 ]; then
        sinfo -o "%P %a %D %T %c %m %G"
        sacctmgr -n -p list assoc cluster="$CLUSTER" format=cluster,account,user
    fi
    return $ok
}

case ${1:-} in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
