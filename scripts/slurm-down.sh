#!/usr/bin/env bash
# Tear down the cluster of scripts/slurm-up.sh: cancel its jobs, stop slurmd and slurmctld (and
# munged if slurm-up started it), remove the /etc/slurm/slurm.conf symlink (a config naming a dead
# controller makes every later `snakemake` call slower: the SLURM plugin asks `scontrol` at import)
# and the state directory.  Safe to run any number of times, and after a failed or partial
# slurm-up; it never touches a slurm.conf that is not its own symlink.  The packages stay installed.
set -u
# The daemons and scontrol live in /usr/sbin, which a PATH without the sbin directories (env -i,
# a non-root shell on Debian) lacks.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

STATE=${QGAN_SLURM_DIR:-/tmp/qgan-slurm}
CONF=/etc/slurm/slurm.conf

ours_conf() { [ -L "$CONF" ] && [ "$(readlink "$CONF")" = "$STATE/slurm.conf" ]; }

stop_pidfile() {  # stop_pidfile FILE NAME: TERM the process in FILE if it is NAME, KILL after 10 s
    local file=$1 name=$2 pid
    [ -s "$file" ] || return 0
    pid=$(cat "$file")
    [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ] || return 0
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null
}

if [ -f "$STATE/slurm.conf" ]; then
    export SLURM_CONF=$STATE/slurm.conf
    if [ -s "$STATE/slurmctld.pid" ] && command -v scancel >/dev/null; then
        timeout 10 scancel --full --quiet --partition "$(awk -F'[ =]' '/^PartitionName=/ {print $2}' "$SLURM_CONF")" 2>/dev/null
        for _ in $(seq 50); do
            [ -z "$(timeout 5 squeue -h -t running,completing,pending 2>/dev/null)" ] && break
            sleep 0.2
        done
    fi
    stop_pidfile "$STATE/slurmd.pid" slurmd
    stop_pidfile "$STATE/slurmctld.pid" slurmctld
    # job step daemons of this cluster's jobs that outlived slurmd (their spool dir is ours)
    for pid in $(pgrep -x slurmstepd 2>/dev/null); do
        if grep -qs "$STATE" "/proc/$pid/cmdline" "/proc/$pid/environ" || [ "$(readlink "/proc/$pid/cwd" 2>/dev/null)" = "$STATE/spool" ]; then
            kill -KILL "$pid" 2>/dev/null
        fi
    done
fi
if [ -f "$STATE/munged.ours" ]; then
    stop_pidfile /run/munge/munged.pid munged
fi
ours_conf && rm -f "$CONF"
rmdir /etc/slurm 2>/dev/null
rm -rf "$STATE"
echo "slurm-down: cluster in $STATE is down; $CONF $( [ -e "$CONF" ] || [ -L "$CONF" ] && echo 'left alone (not ours)' || echo 'absent')"
exit 0
