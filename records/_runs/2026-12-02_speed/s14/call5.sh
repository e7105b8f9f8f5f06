# Session 14, call 5 (after the review of git diff 325acce): NorMuon's block index keyed by its contents (db67bdf)
# and train_step's one zero_grad after an Adam step (54ad2cf), both on the GPU path: the GPU tests that run them
# (two compiled training steps of each kind under sync debug mode, the optimizers' GPU tests, the compiled row
# tables). No bench: two failed machine starts left too little device time for a cold compile of the record step.
source records/_runs/2026-12-02_speed/s9/lib.sh
timeout -s INT 200 python3 -m pytest -v -m gpu tests/test_model.py tests/test_optimizers.py \
  -k "never_waits or row_tables or adam or normuon" > $OUT/gpu_tests.txt 2>&1
echo "gpu tests rc=$? at $(now) s"; tail -1 $OUT/gpu_tests.txt; grep -E "^(FAILED|ERROR|E  )" $OUT/gpu_tests.txt | head
finish
