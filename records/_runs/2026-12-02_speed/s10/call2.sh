# Session 10, call 2: where the warm start's model line goes; micro-bench 4 alone (picks the FP8 gradient's tile);
# the GPU tests of what changed, beside a first --row_grads bench that only fills the compile cache; then the
# record step, each alone on the GPU: this tree at the picked tile, the same with --row_grads (index_add_), both
# twice, and the previous commit.
source records/_runs/2026-12-02_speed/s9/lib.sh
D=records/_runs/2026-12-02_speed/s10
load_cache
timeout 40 python3 $D/startup_probe.py 2>&1 | grep -E "^info|Error" ; echo "probe at $(now) s"
PYTHONPATH=. timeout 120 python3 $D/micro4.py > $OUT/micro4.txt 2>&1; echo "micro4 rc=$? at $(now) s"
grep -v "^$" $OUT/micro4.txt | tail -22
export CE_TILE="$(grep '^best_tile:' $OUT/micro4.txt | cut -d' ' -f2-)"; echo "tile: $CE_TILE"
timeout 200 python3 -m pytest -q -m gpu tests/test_kernels.py tests/test_model.py tests/test_wiring.py \
  -k "fp8 or byte or row_grads" > $OUT/gpu_tests.txt 2>&1 & a=$!
TOP=0 LIMIT=200 PY=$D/with_tile.py bench compile_rows --row_grads=true & c=$!
wait $a; echo "gpu tests done at $(now) s"; tail -4 $OUT/gpu_tests.txt; wait $c
TOP=0 LIMIT=70 PY=$D/with_tile.py bench new
TOP=0 LIMIT=70 PY=$D/with_tile.py bench rows --row_grads=true
TOP=0 LIMIT=70 PY=$D/ref_train_gpt.py bench ref
TOP=0 LIMIT=70 PY=$D/with_tile.py bench new_2
TOP=0 LIMIT=70 PY=$D/with_tile.py bench rows_2 --row_grads=true
save_cache; finish
