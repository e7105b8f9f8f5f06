# Session 11, call 5 (the last of the budget): the GPU test of the e4m3 copy with its mended expectation (within
# one code; call 3's expected bytes identical but for 0.1%, and 0.76% differed), then micro-bench 7 with its bug
# mended (the remaining tiles, the second matmul's time).
source records/_runs/2026-12-02_speed/s9/lib.sh
D=records/_runs/2026-12-02_speed/s11
timeout 70 python3 -m pytest -q -m gpu tests/test_kernels.py -k "fp8_copy or relu_sq_mlp_fp8" > $OUT/gpu_tests.txt 2>&1
echo "gpu tests rc=$? at $(now) s"; tail -2 $OUT/gpu_tests.txt; grep -E "^E  " $OUT/gpu_tests.txt | head -5
PYTHONPATH=. timeout 50 python3 $D/micro7.py > $OUT/micro7.txt 2>&1; echo "micro7 rc=$? at $(now) s"
grep -v "^$" $OUT/micro7.txt | tail -9
finish
