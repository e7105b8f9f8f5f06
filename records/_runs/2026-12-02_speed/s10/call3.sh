# Session 10, call 3: the proxy A/B's seed 2 (both arms at once) on the previous commit, as seeds 0-1 in call 1;
# beside them the GPU tests of the FP8 head at this tree's default tile (call 2 ran them at an earlier default).
source records/_runs/2026-12-02_speed/s9/lib.sh
D=records/_runs/2026-12-02_speed/s10
load_cache; tokenize
LIMIT=240 PY=$D/ref_train_gpt.py proxy bf16head 2 375 --fp8_head=false & a=$!
LIMIT=240 PY=$D/ref_train_gpt.py proxy fp8head 2 375 & b=$!
sleep 60  # past the proxies' compile peaks
timeout 170 python3 -m pytest -q -m gpu tests/test_kernels.py tests/test_model.py -k "fp8 or byte" > $OUT/gpu_tests.txt 2>&1
echo "gpu tests rc=$? at $(now) s"; tail -3 $OUT/gpu_tests.txt
wait $a $b
finish
