# Session 11, call 1: micro-bench 6 alone (the FP8 MLP kernel's tile); the GPU tests of the FP8 MLP beside two
# benches that only fill the compile cache; then the record step, each alone on the GPU: --fp8_mlp=false (this
# tree's default, the previous commit's path) and --fp8_mlp=true at micro-bench 6's best tile, twice each.
source records/_runs/2026-12-02_speed/s9/lib.sh
D=records/_runs/2026-12-02_speed/s11
PYTHONPATH=. timeout 90 python3 $D/micro6.py > $OUT/micro6.txt 2>&1; echo "micro6 rc=$? at $(now) s"
cat $OUT/micro6.txt | grep -v "^$" | tail -16
export FP8_MLP_CONFIG="$(grep '^best_fp8_config:' $OUT/micro6.txt | cut -d' ' -f2-)"; echo "config: $FP8_MLP_CONFIG"
timeout 240 python3 -m pytest -q -m gpu tests/test_kernels.py tests/test_model.py \
  -k "fp8_mlp or relu_sq or fused_mlp" > $OUT/gpu_tests.txt 2>&1 & a=$!
TOP=0 LIMIT=230 PY=$D/with_config.py bench compile_fp8 --fp8_mlp=true & b=$!
TOP=0 LIMIT=230 bench compile_bf16 --fp8_mlp=false & c=$!
wait $a; echo "gpu tests done at $(now) s"; tail -4 $OUT/gpu_tests.txt; wait $b $c
TOP=0 LIMIT=70 bench bf16 --fp8_mlp=false
TOP=20 LIMIT=70 PY=$D/with_config.py bench fp8 --fp8_mlp=true --bench_trace=/tmp/fp8_trace.json
TOP=0 LIMIT=70 bench bf16_2 --fp8_mlp=false
TOP=0 LIMIT=70 PY=$D/with_config.py bench fp8_2 --fp8_mlp=true
finish
