# Session 9, call 4 (warm machine right after call 3, same tree): --row_grads' GPU test (it was not in this tree:
# deselected) and a second --fp8_head=true bench on call 3's compile cache.
source records/_runs/2026-12-02_speed/s9/lib.sh; load_cache >/dev/null
TORCHINDUCTOR_CACHE_DIR=/tmp/cc/inductor TRITON_CACHE_DIR=/tmp/cc/triton timeout 100 python3 -m pytest -q -m gpu tests/test_wiring.py -k "row_grads" -s > $OUT/gpu_tests_rowgrads.txt 2>&1
echo "rowgrads gpu test rc=$? $(tail -1 $OUT/gpu_tests_rowgrads.txt)"; TOP=0 LIMIT=130 bench fp8_2 --fp8_head=true; finish
