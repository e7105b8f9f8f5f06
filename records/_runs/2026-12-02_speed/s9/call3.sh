# Session 9, call 3 (tree: 1cadc05, the FP8 head as one op, its backward the row kernel writing e5m2 and the
# packed byte transpose, with the helper's --row_grads at 81c6415 merged, off): the FP8 head's GPU tests, then the record step alone on the GPU:
# main's bf16 head, --fp8_head=true (traced), and --fp8_head=true --row_grads=true, on call 1's compile cache.
source records/_runs/2026-12-02_speed/s9/lib.sh
load_cache
TORCHINDUCTOR_CACHE_DIR=/tmp/cc/inductor TRITON_CACHE_DIR=/tmp/cc/triton timeout 200 python3 -m pytest -q -m gpu tests/test_kernels.py tests/test_model.py -k "fp8 or byte" > $OUT/gpu_tests.txt 2>&1
echo "gpu tests rc=$? at $(now) s: $(tail -1 $OUT/gpu_tests.txt)"; grep -E "^(FAILED|ERROR)" $OUT/gpu_tests.txt | head
TORCH_LOGS=recompiles TOP=12 LIMIT=120 bench bf16
TOP=25 LIMIT=150 bench fp8 --fp8_head=true --bench_trace=/tmp/fp8_trace.json.gz
[ $(now) -lt 400 ] && TOP=25 LIMIT=$(( 570 - $(now) )) bench fp8_rowgrads --fp8_head=true --row_grads=true --bench_trace=/tmp/rg_trace.json.gz
finish
