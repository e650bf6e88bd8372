#!/usr/bin/env bash
# Stop the one-node test cluster started by slurm_up.sh (idempotent). `--purge` also deletes
# its state directory (config, munge key, job state, logs) and the /etc/slurm/slurm.conf link.
set -euo pipefail

DIR="${QF_SLURM_DIR:-/tmp/quantface-slurm}"

stop() {  # stop the daemon whose pid file is $1, waiting up to 20 s
    local pidfile=$1
    [[ -f "$pidfile" ]] || return 0
    local pid
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid"
        for _ in $(seq 1 20); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 1
        done
    fi
    rm -f "$pidfile"
}

if [[ -f "$DIR/slurm.conf" ]]; then
    export SLURM_CONF="$DIR/slurm.conf"
    squeue -h -o %i 2>/dev/null | xargs -r scancel 2>/dev/null || true
fi
stop "$DIR/slurmd.pid"
stop "$DIR/slurmctld.pid"
stop "$DIR/munge/munged.pid"

if [[ "${1:-}" == "--purge" ]]; then
    if [[ "$(readlink /etc/slurm/slurm.conf 2>/dev/null)" == "$DIR/slurm.conf" ]]; then
        rm -f /etc/slurm/slurm.conf
    fi
    rm -rf "$DIR"
fi
echo "SLURM down ($DIR)"
