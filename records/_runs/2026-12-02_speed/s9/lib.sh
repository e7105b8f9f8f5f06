# Helpers for session 9's device calls (sourced from the repository root). Benches need no corpus; `tokenize`
# makes the proxy's shards from .gpu/text when a call runs the proxy.
set -u
export PYTHONUNBUFFERED=1
start=$(date +%s)
now() { echo $(( $(date +%s) - start )); }
tokenize() {
  ls /tmp/shards/*_val_*.bin > /dev/null 2>&1 || python3 data/tokenize_text.py .gpu/text/*.jsonl.xz --out_dir /tmp/shards \
    --encoder_json .gpu/gpt2/encoder.json > /dev/null 2>&1 || { echo "tokenize failed"; exit 1; }
  echo "tokenized at $(now) s"
}
proxy() {  # name seed steps flags...: one proxy run, its log in $OUT/name/
  local name=$1 seed=$2 steps=$3; shift 3
  mkdir -p $OUT/$name
  timeout ${LIMIT:-420} python3 ${PY:-train_gpt.py} --preset=proxy --num_iterations=$steps \
    --train_files='/tmp/shards/*_train_*.bin' --val_files='/tmp/shards/*_val_*.bin' --seed=$seed --log_dir=$OUT/$name \
    --run_id=${name}_seed$seed --compile_cache=/tmp/cc "$@" > /dev/null 2>>$OUT/$name/stderr_seed$seed.txt
  echo "proxy $name seed $seed rc=$? at $(now) s: $(grep -hE '^final_val_loss|^error|^info:val' $OUT/$name/${name}_seed$seed.txt | tr '\n' ' ')"
}
bench() {  # name flags...: the record step alone on the GPU, on the call's compile cache /tmp/cc
  local name=$1; shift
  mkdir -p $OUT/bench
  timeout ${LIMIT:-240} python3 ${PY:-train_gpt.py} --bench_steps=8 --warmup_steps=2 --seq_lens=49152 --lr_stage_muls=1.0 \
    --log_dir=$OUT/bench --run_id=$name --compile_cache=/tmp/cc "$@" > /dev/null 2>>$OUT/bench/stderr_$name.txt
  echo "bench $name rc=$? at $(now) s"; grep -E "^info:(built|bench|warmup|ready)" $OUT/bench/$name.txt | grep -v "info:bench share"
  grep -E "^info:profile" $OUT/bench/$name.txt | head -${TOP:-14}
}
# The compile cache travels back in pieces under 16 MB (at most 6, beside the logs), so a later call can start warm.
save_cache() { [ -d /tmp/cc ] && tar cf - -C /tmp cc | xz -T0 -6 | split -b 15M -d - $OUT/cc.tar.xz.; ls -la $OUT/cc.tar.xz.* | awk '{s+=$5} END {print "cache pieces:", NR, s/1e6, "MB"}'; }
load_cache() { ls .gpu/cc.tar.xz.* > /dev/null 2>&1 && cat .gpu/cc.tar.xz.* | xz -d | tar xf - -C /tmp && echo "cache loaded at $(now) s: $(du -sh /tmp/cc | cut -f1)"; }
finish() { echo "total $(now) s"; cd $OUT && tar czf logs.tar.gz */ *.txt 2>/dev/null; rm -rf */ *.txt; }
