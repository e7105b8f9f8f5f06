# Session 7, call 3 (tree: gpu-next with the two GPU tests' tolerances fixed): those GPU tests, the Adam micro-bench,
# then the proxy step alone on the GPU: gpu-next's defaults (Adam kernel), main's, the code before the recipe work.
source .gpu/lib.sh
timeout 150 python3 -m pytest -q -m gpu tests/ -k "adam_kernel or fused_fp8" > $OUT/gpu_tests.txt 2>&1; echo "gpu tests rc=$? at $(now) s"; tail -3 $OUT/gpu_tests.txt
timeout 80 python3 .gpu/adam_micro.py > $OUT/adam_micro.txt 2>&1; echo "adam micro rc=$? at $(now) s"; grep adam_micro $OUT/adam_micro.txt
benchfile() {  # name limit file flags...
  local name=$1 limit=$2 file=$3; shift 3
  mkdir -p $OUT/bench
  timeout $limit python3 $file --bench_steps=8 --log_dir=$OUT/bench --run_id=$name "$@" \
    > /dev/null 2>>$OUT/bench/stderr_$name.txt
  echo "bench $name rc=$? at $(now) s"; grep -E "info:(bench|warmup|ready|built)" $OUT/bench/$name.txt | grep -v "info:bench share"
}
benchfile proxy_next 200 train_gpt.py --preset=proxy --warmup_steps=2
benchfile proxy_now 120 .gpu/main_train_gpt.py --preset=proxy --warmup_steps=2
[ $(now) -lt 300 ] && benchfile proxy_base 190 .gpu/base_train_gpt.py --preset=proxy --warmup_steps=1
echo "total $(now) s"
cd $OUT && tar czf logs.tar.gz */ && rm -rf */
