#!/usr/bin/env bash
# Train on this machine: 1 server + N clients under `torchrun --standalone`.
#
#   launch/run_local.sh N_CLIENTS [launch.train overrides ...]
#   launch/run_local.sh 2 --method fedlora --train.max_steps 10
#   launch/run_local.sh 0 --method cenlora          # CenLoRA is one process
#
# Python: $SPLITLORA_PYTHON, else the repository's .venv, else python3.
set -euo pipefail

usage() { echo "usage: $0 N_CLIENTS [--section.key=value ...]" >&2; exit 2; }
[[ $# -ge 1 ]] || usage
n_clients="$1"; shift
[[ "$n_clients" =~ ^[0-9]+$ ]] || { echo "run_local: N_CLIENTS must be a number, got '$n_clients'" >&2; usage; }

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# Find the method among the overrides (--method X or --method=X); the default is splitlora.
method=splitlora
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    case "${args[i]}" in
        --method=*) method="${args[i]#--method=}" ;;
        --method) method="${args[i + 1]:-}" ;;
    esac
done

if [[ "$method" == cenlora ]]; then
    nproc=1  # the centralized reference has no server/client split
else
    if ((n_clients < 1)); then
        echo "run_local: $method needs at least one client" >&2
        exit 2
    fi
    nproc=$((n_clients + 1))  # rank 0 = server, ranks 1..N = clients
fi

python="${SPLITLORA_PYTHON:-}"
if [[ -z "$python" ]]; then
    if [[ -x "$repo/.venv/bin/python" ]]; then python="$repo/.venv/bin/python"; else python=python3; fi
fi

# Import launch.* from this checkout without changing the caller's directory (relative --out.dir).
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
exec "$python" -m torch.distributed.run --standalone --nproc_per_node="$nproc" -m launch.train "$@"
