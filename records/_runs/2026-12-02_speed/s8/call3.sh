# Session 8, call 3 (tree: main + the fused FP8 head, build on device, the six tricks on by default): every GPU
# test, then the record step alone on the GPU: the new defaults (cold compile), then with the fused FP8 head.
source .gpu/lib.sh
timeout 260 python3 -m pytest -q -m gpu tests/ --durations=12 > $OUT/gpu_tests.txt 2>&1; echo "gpu tests rc=$? at $(now) s"
grep -E "passed|failed|^FAILED|^[0-9.]+s call" $OUT/gpu_tests.txt | head -30
LIMIT=230 bench new_bf16
[ $(now) -lt 380 ] && LIMIT=$(( 590 - $(now) )) bench new_fp8 --fp8_head=true
echo "total $(now) s"
cd $OUT && tar czf logs.tar.gz */ && rm -rf */
