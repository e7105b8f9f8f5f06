#!/usr/bin/env bash
# Train on every visible GPU (NPROC=N to choose); arguments pass through to train_gpt.py, e.g. ./run.sh --num_iterations=100
set -euo pipefail
cd "$(dirname "$0")"
NPROC=${NPROC:-$(python3 -c "import torch; print(max(torch.cuda.device_count(), 1))")}
exec torchrun --standalone --nproc_per_node="$NPROC" train_gpt.py "$@"
