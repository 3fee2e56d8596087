#!/usr/bin/env bash
# fedlm on a throwaway local Flower deployment: a SuperLink and one SuperNode per client on 127.0.0.1,
# started, used and stopped by `fedlm run --engine flower --flower-runtime local-deployment`
# (secagg.adapters.flower_launcher drives flower-superlink, flower-supernode and flwr run).
# Usage: examples/fedlm_flower_app/run_local.sh [extra fedlm run flags]
#   e.g. examples/fedlm_flower_app/run_local.sh --clients 4 --clients-per-round 4 --rounds 2
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
exec "${FEDLM:-fedlm}" run --engine flower --flower-runtime local-deployment --out runs/flower-deployment "$@"
