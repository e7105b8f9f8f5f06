# Session 4, call 1: GPU tests beside the all-five-flags proxy arm (375 steps, seeds 0-2 at once), then each
# code alone on the GPU at the proxy's step (--bench_steps) for a clean ms/step: the all-flags arm vs the old code.
set -u
export PYTHONUNBUFFERED=1
start=$(date +%s)
python3 data/tokenize_text.py .gpu/text/*.jsonl.xz --out_dir /tmp/shards --encoder_json .gpu/gpt2/encoder.json > /dev/null 2>&1 || exit 1
python3 -m pytest -q -m gpu tests/ > $OUT/gpu_tests.txt 2>&1 &
tests=$!
ALL="--num_layers=11 --window_pattern=SSSLSSSSSSL --skips=3:6 --no_attention_layers=6 --skip_gate_init=-1.5
 --sublayer_residual=true --rope=half_yarn --attn_scale=0.1 --val_window_blocks=6:13
 --mtp_weights=1:0.5:0.25..0,1:0.5..0,1 --value_embed_layers=0,1,8,9,10 --value_embed_gates=true --adam_every=2"
arm() {  # name, script, flags...
  local name=$1 script=$2; shift 2
  mkdir -p $OUT/$name
  local pids=""
  for seed in 0 1 2; do
    timeout 420 python3 $script --preset=proxy --num_iterations=375 --train_files='/tmp/shards/*_train_*.bin' \
      --val_files='/tmp/shards/*_val_*.bin' --seed=$seed --log_dir=$OUT/$name \
      --run_id=${name}_seed$seed "$@" > /dev/null 2>>$OUT/$name/stderr.txt &
    pids="$pids $!"
  done
  wait $pids
  echo "$name done at $(( $(date +%s) - start )) s"
  for f in $OUT/$name/*_seed*.txt; do echo "$(basename $f): $(grep -E '^step:[0-9]+/375 val_loss' $f | cut -d' ' -f1,2 | tr '\n' ' ')"; grep -E "^(final|error)|info:warmup" $f; done
  tail -n 3 $OUT/$name/stderr.txt
}
arm all375 train_gpt.py $ALL
wait $tests; echo "gpu tests done at $(( $(date +%s) - start )) s"; tail -n 5 $OUT/gpu_tests.txt
bench() {  # name, script, flags...
  local name=$1 script=$2; shift 2
  mkdir -p $OUT/pbench
  timeout 150 python3 $script --preset=proxy --bench_steps=8 --warmup_steps=1 --log_dir=$OUT/pbench --run_id=$name "$@" \
    > /dev/null 2>>$OUT/pbench/stderr_$name.txt
  echo "pbench $name rc=$? at $(( $(date +%s) - start )) s"; grep -E "info:(bench|warmup)" $OUT/pbench/$name.txt | grep -v profile
}
bench all train_gpt.py $ALL
bench old .gpu/base/train_gpt.py
echo "total: $(( $(date +%s) - start )) s"
