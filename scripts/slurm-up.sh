#!/usr/bin/env bash
# Bring up a real single-node SLURM cluster on this Debian machine (root): munge, slurmctld and
# slurmd from apt (--no-install-recommends), one node `localhost` with every CPU of the machine and
# QGAN_SLURM_GPUS fake GPUs declared through gres, in one partition (QGAN_SLURM_PARTITION, default
# `gpu`, the partition profiles/slurm asks for).  No accounting storage: `sacct` does not work, so
# the executor must poll with squeue (--slurm-status-command squeue); finished jobs stay visible to
# squeue/scontrol for MinJobAge (QGAN_SLURM_MIN_JOB_AGE seconds).  scripts/slurm-down.sh undoes it.
#
# Idempotent: tears down whatever an earlier run left, then starts afresh.
# Exit status: 0 up; 3 this machine cannot host it (not root, no apt, packages not installable, a
# foreign SLURM config present) -- the reason is the last line on stderr; anything else: a failure.
set -euo pipefail
# The daemons and scontrol live in /usr/sbin, which a PATH without the sbin directories (env -i,
# a non-root shell on Debian) lacks.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

STATE=${QGAN_SLURM_DIR:-/tmp/qgan-slurm}
PARTITION=${QGAN_SLURM_PARTITION:-gpu}
GPUS=${QGAN_SLURM_GPUS:-2}
MIN_JOB_AGE=${QGAN_SLURM_MIN_JOB_AGE:-3600}
HERE=$(cd "$(dirname "$0")" && pwd)
CONF=/etc/slurm/slurm.conf

cannot() { echo "slurm-up: cannot host a local SLURM cluster here: $*" >&2; exit 3; }

[ "$(id -u)" = 0 ] || cannot "not root"
# The job-step executor strips SLURM_CONF from the environment of its `srun`, so the config must be
# at SLURM's default path; a config there that is not ours belongs to a real installation.
if [ -e "$CONF" ] || [ -L "$CONF" ]; then
    [ "$(readlink "$CONF" 2>/dev/null || true)" = "$STATE/slurm.conf" ] || cannot "$CONF exists and is not ours"
fi

bash "$HERE/slurm-down.sh" >/dev/null 2>&1 || true

# ---- packages
missing=()
for pkg in munge slurm-client slurmctld slurmd; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    command -v apt-get >/dev/null || cannot "no apt-get to install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q --no-install-recommends "${missing[@]}" >"${TMPDIR:-/tmp}/qgan-slurm-apt.log" 2>&1; then
        apt-get update -q >>"${TMPDIR:-/tmp}/qgan-slurm-apt.log" 2>&1 \
            && apt-get install -y -q --no-install-recommends "${missing[@]}" >>"${TMPDIR:-/tmp}/qgan-slurm-apt.log" 2>&1 \
            || cannot "apt-get install ${missing[*]} failed (see ${TMPDIR:-/tmp}/qgan-slurm-apt.log)"
    fi
fi
for exe in munged slurmctld slurmd sbatch squeue scontrol; do
    command -v "$exe" >/dev/null || cannot "$exe missing after installing the packages"
done

mkdir -p "$STATE"/{ctld,spool,dev,log}

# ---- munge: a key, and its socket directory with the mode munged insists on (0711)
if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    if command -v mungekey >/dev/null; then mungekey --create --force --keyfile /etc/munge/munge.key; \
    else dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none; fi
fi
chown munge:munge /etc/munge/munge.key /etc/munge && chmod 0400 /etc/munge/munge.key && chmod 0700 /etc/munge
install -d -o munge -g munge -m 0711 /run/munge
install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    runuser -u munge -- munged
    touch "$STATE/munged.ours"   # slurm-down.sh stops munged only when we started it
fi
for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
munge -n | unmunge >/dev/null || { echo "slurm-up: munged does not answer" >&2; exit 1; }

# ---- fake GPUs: character devices (made with mknod) that gres.conf points at
gres_files=""
for i in $(seq 0 $((GPUS - 1))); do
    rm -f "$STATE/dev/gpu$i"
    mknod "$STATE/dev/gpu$i" c 195 "$i"
done
[ "$GPUS" -gt 0 ] && gres_files="$STATE/dev/gpu[0-$((GPUS - 1))]"

cpus=$(nproc)
mem_mb=$(( $(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024 - 512 ))

cat >"$STATE/slurm.conf" <<EOF
# Written by scripts/slurm-up.sh (qgan-bench): a throwaway single-node cluster for tests.
ClusterName=qgan
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
ReturnToService=2
# Finished jobs must stay visible to squeue well beyond the executor's status-check delay: without
# accounting storage, squeue is the only status source.
MinJobAge=$MIN_JOB_AGE
SchedulerParameters=batch_sched_delay=0
SlurmdParameters=config_overrides
# a job that names no memory gets 1 GB per CPU, not the whole node
DefMemPerCPU=1000
NodeName=localhost CPUs=$cpus RealMemory=$mem_mb Gres=gpu:$GPUS State=UNKNOWN
PartitionName=$PARTITION Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
{
    echo "AutoDetect=off"
    [ -n "$gres_files" ] && echo "NodeName=localhost Name=gpu File=$gres_files"
} >"$STATE/gres.conf"

mkdir -p /etc/slurm
ln -sfn "$STATE/slurm.conf" "$CONF"

# ---- daemons (they read gres.conf next to SLURM_CONF)
export SLURM_CONF=$STATE/slurm.conf
slurmctld -c
for _ in $(seq 100); do scontrol ping 2>/dev/null | grep -q "UP" && break; sleep 0.2; done
scontrol ping | grep -q UP || { echo "slurm-up: slurmctld does not answer" >&2; tail -20 "$STATE/log/slurmctld.log" >&2; exit 1; }
slurmd -N localhost
state=""
for _ in $(seq 150); do
    state=$(sinfo -h -n localhost -o %T 2>/dev/null || true)
    case "$state" in idle*|mixed*|allocated*) break ;; esac
    sleep 0.2
done
case "$state" in
    idle*|mixed*|allocated*) ;;
    *) echo "slurm-up: node localhost is '$state'" >&2; tail -20 "$STATE/log/slurmd.log" >&2; exit 1 ;;
esac
echo "slurm-up: cluster up: partition $PARTITION, node localhost ($cpus CPUs, $mem_mb MB, $GPUS fake GPUs), config $CONF -> $STATE/slurm.conf"
