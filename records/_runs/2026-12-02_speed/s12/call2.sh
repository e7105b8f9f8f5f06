# Session 12, call 2: call 1 found RowTable's index_add_ (indexFuncLargeIndex) at 0.29 ms a call, eating the gain.
# Micro-bench 8 (the Triton kernel, unsorted and sorted, against index_add_), its best config written into
# train_gpt.py; the GPU tests of the kernel and the row tables beside a compile-filling bench; then the record
# step, each alone: this tree, the previous commit (325acce), this tree traced.
source records/_runs/2026-12-02_speed/s9/lib.sh
D=records/_runs/2026-12-02_speed/s12
mkdir -p .gpu/cc; [ -e /tmp/cc ] || ln -s $PWD/.gpu/cc /tmp/cc
tokenize
PYTHONPATH=. timeout 120 python3 $D/micro8.py > $OUT/micro8.txt 2>&1; echo "micro8 rc=$? at $(now) s"; cat $OUT/micro8.txt | tail -40
best="$(grep '^best_add_rows_config:' $OUT/micro8.txt | cut -d' ' -f2- | sed 's/ /, /g')"
[ -n "$best" ] && sed -i "s/^ADD_ROWS_CONFIG = (True, 64, 128, 4)/ADD_ROWS_CONFIG = ($best)/" train_gpt.py
grep -n "^ADD_ROWS_CONFIG" train_gpt.py; cp train_gpt.py $OUT/train_gpt_call2.py
timeout 200 python3 -m pytest -q -m gpu tests/test_model.py tests/test_kernels.py -k "row_table or add_rows" \
  > $OUT/gpu_tests.txt 2>&1 & t=$!
TOP=0 LIMIT=200 bench compile_new & a=$!
wait $t; echo "gpu tests done at $(now) s"; tail -2 $OUT/gpu_tests.txt; grep -E "^(FAILED|E  )" $OUT/gpu_tests.txt | head -8
wait $a
TOP=0 LIMIT=90 bench new
TOP=0 LIMIT=90 PY=$D/ref_train_gpt.py bench ref
TOP=40 LIMIT=100 bench new_2 --bench_trace=/tmp/new_2_trace.json
finish
