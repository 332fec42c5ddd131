#!/usr/bin/env bash
# One splitlora process started by srun directly (no torchrun): map SLURM's task ids to
# the variables torch.distributed reads, then run launch.train with the given overrides.
#
#   srun [--distribution=arbitrary ...] launch/slurm/srun_rank_env.sh [overrides ...]
#
# Rank 0 (the server) is task 0, so MASTER_ADDR must be the host of task 0: the first
# node of the allocation unless MASTER_ADDR is already set (splitlora-uneven.sbatch sets it).
set -euo pipefail

: "${SLURM_PROCID:?srun_rank_env.sh: SLURM_PROCID is not set (run me under srun)}"
: "${SLURM_LOCALID:?srun_rank_env.sh: SLURM_LOCALID is not set (run me under srun)}"

export RANK="$SLURM_PROCID"
# Inside a job step SLURM_STEP_NUM_TASKS is the step's size; SLURM_NTASKS may be the job's.
export WORLD_SIZE="${SLURM_STEP_NUM_TASKS:-${SLURM_NTASKS:?srun_rank_env.sh: SLURM_NTASKS is not set}}"
export LOCAL_RANK="$SLURM_LOCALID"  # picks the GPU: LOCAL_RANK % visible GPUs
if [[ -z "${MASTER_ADDR:-}" ]]; then
    # All hosts first, then the first: `scontrol ... | head -n1` can die of SIGPIPE under pipefail.
    hosts="$(scontrol show hostnames "${SLURM_JOB_NODELIST:?srun_rank_env.sh: SLURM_JOB_NODELIST is not set}")"
    MASTER_ADDR="$(head -n1 <<< "$hosts")"
fi
export MASTER_ADDR
export MASTER_PORT="${MASTER_PORT:-29500}"  # CHANGE (or export it) when 29500 is taken
# torchrun would set this; the runtime then sets torch threads per role from its config.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"

exec "${SPLITLORA_PYTHON:-python}" -m launch.train "$@"
