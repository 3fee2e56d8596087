#!/usr/bin/env bash
# One SecAgg+ round on a throwaway local Flower deployment (SuperLink + N SuperNodes on 127.0.0.1).
# Usage: examples/flower_app/run_local.sh [NODES] [DROP_NODE DROP_STEP]
#   e.g. examples/flower_app/run_local.sh 4 3 mask   # partition 3 crashes when asked to mask
# Needs flwr (flower-superlink, flower-supernode, flwr) installed next to the python on PATH.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
nodes="${1:-4}"
args=(--nodes "$nodes" --run-config "secagg-num-nodes=$nodes" --timeout 240)
if [[ $# -ge 3 ]]; then
    # 25% dropout makes the SecAgg+ parameter search size the graph for one lost node out of four.
    args+=(--node-config "$2:drop-at=$3" --run-config "secagg-dropout-fraction=0.25")
fi
cd "$root"
exec "${PYTHON:-python3}" -m secagg.adapters.flower_launcher "$here" "${args[@]}"
