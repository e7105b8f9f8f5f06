# Session 4, call 3: the all-flags proxy arm's seed 1 (OOM'd beside two others) and the fp8 arm's seed 2, two at
# once; then the record step (--bench_steps) of the all-flags model, bf16 head and FP8 head, each alone on the GPU.
set -u
export PYTHONUNBUFFERED=1
start=$(date +%s)
python3 data/tokenize_text.py .gpu/text/*.jsonl.xz --out_dir /tmp/shards --encoder_json .gpu/gpt2/encoder.json > /dev/null 2>&1 || exit 1
ALL="--num_layers=11 --window_pattern=SSSLSSSSSSL --skips=3:6 --no_attention_layers=6 --skip_gate_init=-1.5
 --sublayer_residual=true --rope=half_yarn --attn_scale=0.1 --val_window_blocks=6:13
 --mtp_weights=1:0.5:0.25..0,1:0.5..0,1 --value_embed_layers=0,1,8,9,10 --value_embed_gates=true --adam_every=2"
run() {  # name, seed, flags...
  local name=$1 seed=$2; shift 2
  mkdir -p $OUT/$name
  timeout 200 python3 train_gpt.py --preset=proxy --num_iterations=375 --train_files='/tmp/shards/*_train_*.bin' \
    --val_files='/tmp/shards/*_val_*.bin' --seed=$seed --log_dir=$OUT/$name \
    --run_id=${name}_seed$seed "$@" > /dev/null 2>>$OUT/$name/stderr.txt
}
run all375 1 $ALL & a=$!
run fp8all375 2 $ALL --fp8_head=true & b=$!
wait $a $b
echo "proxy done at $(( $(date +%s) - start )) s"
for f in $OUT/*/*_seed*.txt; do echo "$(basename $f): $(grep -E '^step:[0-9]+/375 val_loss' $f | cut -d' ' -f1,2 | tr '\n' ' ')"; grep -E "^(final|error)|info:warmup" $f; done
bench() {  # name, flags...
  local name=$1; shift
  mkdir -p $OUT/bench
  timeout 195 python3 train_gpt.py --bench_steps=8 --warmup_steps=2 --seq_lens=49152 --lr_stage_muls=1.0 \
    --log_dir=$OUT/bench --run_id=$name "$@" > /dev/null 2>>$OUT/bench/stderr_$name.txt
  echo "bench $name rc=$? at $(( $(date +%s) - start )) s"; grep -E "info:(bench|warmup)" $OUT/bench/$name.txt | grep -v profile
}
bench all_bf16 $ALL
bench all_fp8 $ALL --fp8_head=true
echo "total: $(( $(date +%s) - start )) s"
