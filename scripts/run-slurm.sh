#!/bin/bash
# `make run-slurm`: the stack with the local site's models in Slurm jobs.
#
# Starts the development Slurm (scripts/dev-slurm.sh) in .first/dev-slurm,
# the hot-node keeper (which starts the hot model's first job at once), and
# the gateway in the foreground. Ctrl-C stops the gateway; then the keeper,
# every job and the development Slurm are stopped too, by their own PIDs.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
FEDERATION=${FEDERATION_CONFIG:-cluster_configs/local-slurm-federation.yaml}
SLURM_DIR=$PWD/.first/dev-slurm

conf_line=$(scripts/dev-slurm.sh start "$SLURM_DIR")
export "${conf_line?}"
echo "[run-slurm] development Slurm up ($conf_line)" >&2

keeper_pid= gateway_pid=
stop_pid() { if [ -n "$1" ]; then kill -TERM "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; fi; }
cleanup() {
    trap - EXIT INT TERM
    stop_pid "$gateway_pid"
    stop_pid "$keeper_pid"
    echo "[run-slurm] stopping the jobs and the development Slurm" >&2
    scripts/dev-slurm.sh stop "$SLURM_DIR" || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"$BIN/first" keeper run --config "$FEDERATION" 2> .first/keeper.log &
keeper_pid=$!
echo "[run-slurm] hot-node keeper running (log: .first/keeper.log)" >&2
# In the background and waited for, so that a SIGTERM to this script is handled at once.
"$BIN/first" gateway up --standalone --config "$FEDERATION" --with-key "${USER:-local}" &
gateway_pid=$!
wait "$gateway_pid"
