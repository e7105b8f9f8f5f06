# Session 8, call 2 (warm, tree: main 47c8bce): seed 2 of "six" and "five" (skipped by call 1's deadline), then the
# proxy step alone on the GPU with the six tricks and with the defaults.
source .gpu/lib.sh
SIX="--backout_layer=7 --bigram_signs=8192 --paired_head_layers=0,2,5,9 --muon_qk_head_pairs=true --attn_source=7 --zero_attn_out=false"
FIVE="--backout_layer=7 --bigram_signs=8192 --paired_head_layers= --muon_qk_head_pairs=true --attn_source=7 --zero_attn_out=false"
PARALLEL=2 queue 400 <<JOBS
200 six 2 375 $SIX
200 five 2 375 $FIVE
JOBS
benchfile() {  # name limit flags...
  local name=$1 limit=$2; shift 2
  mkdir -p $OUT/bench
  timeout $limit python3 train_gpt.py --bench_steps=8 --warmup_steps=2 --preset=proxy --log_dir=$OUT/bench --run_id=$name "$@" \
    > /dev/null 2>>$OUT/bench/stderr_$name.txt
  echo "bench $name rc=$? at $(now) s"; grep -E "info:(bench|warmup|ready|built)" $OUT/bench/$name.txt | grep -v "info:bench share"
}
benchfile proxy_six 110 $SIX
benchfile proxy_default 90
echo "total $(now) s"
cd $OUT && tar czf logs.tar.gz */ && rm -rf */
