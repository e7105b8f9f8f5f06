#!/usr/bin/env bash
# Train on every visible GPU (NPROC=N to choose); arguments pass through to train_gpt.py, e.g. ./run.sh --num_iterations=100
# Without a GPU only the CPU-sized preset runs, as one process: ./run.sh --preset=tiny --train_files=... --val_files=...
set -euo pipefail
cd "$(dirname "$0")"

slices=8  # a step is 8 slices (one per rank of an 8-GPU run); the ranks split them evenly
cpu_ok=0
for arg in "$@"; do
    case "$arg" in
        --slices_per_step=*) if [[ ${arg#*=} =~ ^[1-9][0-9]*$ ]]; then slices=${arg#*=}; fi ;;
        --preset=tiny | --help | -h) cpu_ok=1 ;;
    esac
done

if ! gpus=$(python3 -c "import torch; print(torch.cuda.device_count())"); then
    echo "run.sh: python3 cannot import torch; install the requirements first: pip install -r requirements.txt" >&2
    exit 1
fi
if (( gpus == 0 && cpu_ok == 0 )); then
    echo "run.sh: no GPU visible, and this preset trains the 124M model on GPUs. On a CPU, run the tiny preset:" \
         "./run.sh --preset=tiny --train_files=... --val_files=..." >&2
    exit 1
fi
NPROC=${NPROC:-$(( gpus > 0 ? gpus : 1 ))}
if ! [[ $NPROC =~ ^[1-9][0-9]*$ ]] || (( slices % NPROC )); then
    fits=() fit=1
    for (( n = 1; n <= slices; n++ )); do
        if (( slices % n == 0 )); then fits+=("$n"); if (( n <= gpus )); then fit=$n; fi; fi
    done
    list=$(printf '%s, ' "${fits[@]}")
    echo "run.sh: NPROC=$NPROC ($gpus GPUs visible) does not fit: a step is $slices slices, split evenly over the" \
         "processes, so their count must divide $slices (${list%, }); e.g. NPROC=$fit ./run.sh" >&2
    exit 1
fi
if (( gpus > 0 && NPROC > gpus )); then
    echo "run.sh: NPROC=$NPROC but only $gpus GPUs are visible; one process per GPU" >&2
    exit 1
fi

if command -v torchrun > /dev/null; then
    launcher=(torchrun)
else
    launcher=(python3 -m torch.distributed.run)  # pip puts torchrun in the environment's bin, which may not be on PATH
fi
exec "${launcher[@]}" --standalone --nproc_per_node="$NPROC" train_gpt.py "$@"
