# Session 4, call 2: the compiled-Adam GPU test after the fix (hyperparameters as a device tensor), then the
# all-flags proxy arm again on the fixed code (seeds 0-2 at once), then the same with --fp8_head=true (seeds 0-1).
set -u
export PYTHONUNBUFFERED=1
start=$(date +%s)
python3 data/tokenize_text.py .gpu/text/*.jsonl.xz --out_dir /tmp/shards --encoder_json .gpu/gpt2/encoder.json > /dev/null 2>&1 || exit 1
python3 -m pytest -q -m gpu tests/test_optimizers.py > $OUT/gpu_tests.txt 2>&1; tail -n 2 $OUT/gpu_tests.txt
echo "gpu test done at $(( $(date +%s) - start )) s"
ALL="--num_layers=11 --window_pattern=SSSLSSSSSSL --skips=3:6 --no_attention_layers=6 --skip_gate_init=-1.5
 --sublayer_residual=true --rope=half_yarn --attn_scale=0.1 --val_window_blocks=6:13
 --mtp_weights=1:0.5:0.25..0,1:0.5..0,1 --value_embed_layers=0,1,8,9,10 --value_embed_gates=true --adam_every=2"
arm() {  # name, seeds, limit, flags...
  local name=$1 seeds=$2 limit=$3; shift 3
  mkdir -p $OUT/$name
  local pids=""
  for seed in $seeds; do
    timeout $limit python3 train_gpt.py --preset=proxy --num_iterations=375 --train_files='/tmp/shards/*_train_*.bin' \
      --val_files='/tmp/shards/*_val_*.bin' --seed=$seed --log_dir=$OUT/$name \
      --run_id=${name}_seed$seed "$@" > /dev/null 2>>$OUT/$name/stderr.txt &
    pids="$pids $!"
  done
  wait $pids
  echo "$name done at $(( $(date +%s) - start )) s"
  for f in $OUT/$name/*_seed*.txt; do echo "$(basename $f): $(grep -E '^step:[0-9]+/375 val_loss' $f | cut -d' ' -f1,2 | tr '\n' ' ')"; grep -E "^(final|error)|info:warmup" $f; done
  grep -v "^ \|^Traceback" $OUT/$name/stderr.txt | sort | uniq -c | sort -rn | head -n 5
}
arm all375 "0 1 2" 300 $ALL
arm fp8all375 "0 1" 250 $ALL --fp8_head=true
echo "total: $(( $(date +%s) - start )) s"
