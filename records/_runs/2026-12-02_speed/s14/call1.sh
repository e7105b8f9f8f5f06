# Session 14, call 1: the whole GPU suite on this tree (b472ddb: the add kernel without its sorted path, RowTable's
# grad_sum on ctx), every GPU test from an empty Dynamo (the conftest fixture of d644a74). SIGINT at the limit, so
# pytest still prints what passed.
source records/_runs/2026-12-02_speed/s9/lib.sh
timeout -s INT 565 python3 -m pytest -v -m gpu tests/ --durations=15 > $OUT/gpu_tests.txt 2>&1
echo "gpu tests rc=$? at $(now) s"; tail -1 $OUT/gpu_tests.txt
grep -E "^(FAILED|ERROR|E  )" $OUT/gpu_tests.txt | head -20
finish
