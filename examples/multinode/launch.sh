#!/usr/bin/env bash
# One machine's share of an anchorclip job that runs on several machines: run this on every machine with the same
# arguments (an anchorclip command and its flags); slurm.sbatch does it with srun. accelerate's multi-machine launch
# (torchrun underneath) joins the machines into one process group; docs/multinode.md has the details.
#
#   MACHINE_RANK=0 MAIN_PROCESS_IP=10.0.0.1 NUM_MACHINES=2 bash examples/multinode/launch.sh train --dataset_name ...
#
# Settings (environment; under SLURM the first three come from the job):
#   NUM_MACHINES           machines in the job              (default: $SLURM_JOB_NUM_NODES, else 1)
#   MACHINE_RANK           this machine, 0 .. NUM_MACHINES-1 (default: $SLURM_NODEID, else 0)
#   MAIN_PROCESS_IP        machine 0's address              (default: the job's first host, from scontrol)
#   MAIN_PROCESS_PORT      a free port on machine 0         (default: 29500)
#   PROCESSES_PER_MACHINE  one per GPU                      (default: the GPUs torch sees, at least 1)
#   MIXED_PRECISION        accelerate's --mixed_precision   (default: no; train takes --bf16 itself)
#   PYTHON                 the interpreter with anchorclip  (default: python)
set -euo pipefail

PYTHON=${PYTHON:-python}
NUM_MACHINES=${NUM_MACHINES:-${SLURM_JOB_NUM_NODES:-1}}
MACHINE_RANK=${MACHINE_RANK:-${SLURM_NODEID:-0}}
if [ -z "${MAIN_PROCESS_IP:-}" ]; then
  if [ -z "${SLURM_JOB_NODELIST:-}" ]; then
    echo "launch.sh: set MAIN_PROCESS_IP to machine 0's address (or run under SLURM)." >&2
    exit 2
  fi
  MAIN_PROCESS_IP=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
fi
MAIN_PROCESS_PORT=${MAIN_PROCESS_PORT:-29500}
if [ -z "${PROCESSES_PER_MACHINE:-}" ]; then
  PROCESSES_PER_MACHINE=$("$PYTHON" -c "import torch; print(max(1, torch.cuda.device_count()))")
fi

echo "launch.sh: machine $MACHINE_RANK of $NUM_MACHINES, $PROCESSES_PER_MACHINE process(es), main $MAIN_PROCESS_IP:$MAIN_PROCESS_PORT" >&2
exec "$PYTHON" -m accelerate.commands.launch --multi_gpu \
  --num_machines "$NUM_MACHINES" --machine_rank "$MACHINE_RANK" \
  --main_process_ip "$MAIN_PROCESS_IP" --main_process_port "$MAIN_PROCESS_PORT" \
  --num_processes $((NUM_MACHINES * PROCESSES_PER_MACHINE)) \
  --mixed_precision "${MIXED_PRECISION:-no}" --dynamo_backend no \
  -m anchorclip "$@"
