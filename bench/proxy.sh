#!/usr/bin/env bash
# One arm of a proxy A/B on one GPU: trains --preset=proxy with seeds 0 .. SEEDS-1, PARALLEL at a time, and writes
# their logs to OUT_DIR; records/compare.py then weighs two such folders.
#   bench/proxy.sh OUT_DIR [train_gpt.py flags ...]        e.g. bench/proxy.sh logs/idea --muon_lr=0.03
# DATA (default data/text) holds the shards: FineWeb's folder, or `python data/tokenize_text.py` output.
# A proxy run peaks at ~48 GiB while compiling: two at once fit an H200 (their step times then say nothing), three
# ran out of memory; PARALLEL=1 on 80 GB.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { echo "usage: bench/proxy.sh OUT_DIR [train_gpt.py flags ...]" >&2; exit 2; }
out=$1; shift
data=${DATA:-data/text} seeds=${SEEDS:-3} parallel=${PARALLEL:-2}
ls "$data"/*_val_*.bin > /dev/null 2>&1 || { echo "no validation shards in $data (DATA=...)" >&2; exit 2; }
mkdir -p "$out"
for ((seed = 0; seed < seeds; seed++)); do
  python3 train_gpt.py --preset=proxy --train_files="$data/*_train_*.bin" --val_files="$data/*_val_*.bin" \
    --seed=$seed --log_dir="$out" --run_id="$(basename "$out")_seed$seed" "$@" > /dev/null &
  if (( (seed + 1) % parallel == 0 )); then wait; fi
done
wait
grep -h "^final_val_loss\|^error" "$out"/*.txt
