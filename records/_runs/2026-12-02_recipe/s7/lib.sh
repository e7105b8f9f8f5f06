# Helpers for device calls (sourced): tokenize, a proxy job queue with a deadline, benches.
set -u
export PYTHONUNBUFFERED=1
start=$(date +%s)
now() { echo $(( $(date +%s) - start )); }
ls /tmp/shards/*_val_*.bin > /dev/null 2>&1 || python3 data/tokenize_text.py .gpu/text/*.jsonl.xz --out_dir /tmp/shards --encoder_json .gpu/gpt2/encoder.json > /dev/null 2>&1 || { echo "tokenize failed"; exit 1; }
echo "tokenized at $(now) s"
proxy() {  # name seed steps flags...: one proxy run, its log in $OUT/name/
  local name=$1 seed=$2 steps=$3; shift 3
  mkdir -p $OUT/$name
  timeout 420 python3 ${PY:-train_gpt.py} --preset=proxy --num_iterations=$steps --train_files='/tmp/shards/*_train_*.bin' \
    --val_files='/tmp/shards/*_val_*.bin' --seed=$seed --log_dir=$OUT/$name \
    --run_id=${name}_seed$seed "$@" > /dev/null 2>>$OUT/$name/stderr_seed$seed.txt
  echo "proxy $name seed $seed rc=$? at $(now) s: $(grep -hE '^final_val_loss|^error|^info:val' $OUT/$name/${name}_seed$seed.txt | tr '\n' ' ')"
}
# queue DEADLINE < jobs: each line "cost name seed steps flags..."; two at a time; a job starts only if
# now + cost <= DEADLINE.
queue() {
  local deadline=$1 pids=() cost line
  while read -r cost line; do
    [ -z "$cost" ] && continue
    while [ $(jobs -rp | wc -l) -ge ${PARALLEL:-2} ]; do sleep 2; done
    if [ $(( $(now) + cost )) -gt $deadline ]; then echo "skipped (deadline): $line"; continue; fi
    proxy $line &
    sleep 5
  done
  wait
}
bench() {  # name flags...: the record step alone on the GPU
  local name=$1; shift
  mkdir -p $OUT/bench
  timeout 240 python3 train_gpt.py --bench_steps=8 --warmup_steps=2 --seq_lens=49152 --lr_stage_muls=1.0 \
    --log_dir=$OUT/bench --run_id=$name "$@" > /dev/null 2>>$OUT/bench/stderr_$name.txt
  echo "bench $name rc=$? at $(now) s"; grep -E "info:(bench|warmup|ready)" $OUT/bench/$name.txt | grep -v "info:bench share"
  grep -E "info:bench share" $OUT/bench/$name.txt; grep -E "info:profile" $OUT/bench/$name.txt | head -12
}
