# Session 12, call 1: the row tables' gradients summed in place (RowTable) against the previous commit (325acce).
# The GPU tests this change touches, beside two benches that only fill the compile cache (this tree and the
# previous commit); then the record step, each alone on the GPU: this tree, the previous commit, this tree traced.
source records/_runs/2026-12-02_speed/s9/lib.sh
D=records/_runs/2026-12-02_speed/s12
mkdir -p .gpu/cc; [ -e /tmp/cc ] || ln -s $PWD/.gpu/cc /tmp/cc
timeout 300 python3 -m pytest -q -m gpu tests/test_model.py tests/test_kernels.py \
  -k "row_table or fused_mlp or fp8_mlp or fp8_head or add_rows" > $OUT/gpu_tests.txt 2>&1 & t=$!
TOP=0 LIMIT=280 bench compile_new & a=$!
TOP=0 LIMIT=280 PY=$D/ref_train_gpt.py bench compile_ref & b=$!
wait $t; echo "gpu tests done at $(now) s"; tail -3 $OUT/gpu_tests.txt; grep -E "^(FAILED|E  )" $OUT/gpu_tests.txt | head -8
wait $a $b
TOP=0 LIMIT=100 bench new
TOP=0 LIMIT=100 PY=$D/ref_train_gpt.py bench ref
TOP=30 LIMIT=110 bench new_2 --bench_trace=/tmp/new_2_trace.json
finish
