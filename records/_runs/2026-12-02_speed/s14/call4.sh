# Session 14, call 4: the fixture's mutant. Session 13's call 5 again (the same selection, the same order), with the
# conftest's torch._dynamo.reset() taken out on the device's copy: test_fp8_head_matches_bf16_head_on_gpu[True] should
# fail again, and Dynamo should say it hit its recompile limit, if that limit was the cause.
source records/_runs/2026-12-02_speed/s9/lib.sh
sed -i 's/        torch._dynamo.reset()/        pass/' tests/conftest.py; grep -c "_dynamo.reset()" tests/conftest.py
timeout -s INT 400 python3 -m pytest -v -m gpu tests/test_kernels.py tests/test_optimizers.py tests/test_model.py \
  -k "not never_waits and not aot_autograds and not row_tables" > $OUT/gpu_tests_no_reset.txt 2>&1
echo "gpu tests without the reset rc=$? at $(now) s"; tail -1 $OUT/gpu_tests_no_reset.txt
grep -E "^(FAILED|ERROR|E  )" $OUT/gpu_tests_no_reset.txt | head -12
grep -iE "recompile_limit|cache_size_limit|hit config" $OUT/gpu_tests_no_reset.txt | head -5
git checkout tests/conftest.py
finish
