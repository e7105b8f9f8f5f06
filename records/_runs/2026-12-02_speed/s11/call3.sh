# Session 11, call 3: micro-bench 7 alone (the tile of the FP8 MLP kernel that also writes h in e4m3), written into
# train_gpt.py's default; the GPU tests of the FP8 MLP and the proxy of this tree (FP8 in both MLP matmuls) for
# seeds 0-2 (against call 2's FP8 first matmul only, s11/c2/fp8mlp), two then one, each phase beside a bench that
# only fills the compile cache (.gpu/cc, kept on the machine) for call 4's record-step benches.
source records/_runs/2026-12-02_speed/s9/lib.sh
D=records/_runs/2026-12-02_speed/s11
mkdir -p .gpu/cc; [ -e /tmp/cc ] || ln -s $PWD/.gpu/cc /tmp/cc
PYTHONPATH=. timeout 90 python3 $D/micro7.py > $OUT/micro7.txt 2>&1; echo "micro7 rc=$? at $(now) s"
grep -v "^$" $OUT/micro7.txt | tail -10
best="$(grep '^best_fp8_config:' $OUT/micro7.txt | cut -d' ' -f2- | sed 's/ /, /g')"
[ -n "$best" ] && echo "$best" > .gpu/fp8_config && sed -i "s/\"fp8\": (128, 256, 128, 8, 3)}/\"fp8\": ($best)}/" train_gpt.py
grep -n '"fp8": (' train_gpt.py
tokenize
timeout 260 python3 -m pytest -q -m gpu tests/test_kernels.py tests/test_model.py \
  -k "fp8_mlp or relu_sq or fused_mlp" > $OUT/gpu_tests.txt 2>&1 & t=$!
LIMIT=280 proxy fp8both 0 375 & a=$!
LIMIT=280 proxy fp8both 1 375 & b=$!
TOP=0 LIMIT=260 bench compile_new & c=$!
wait $t; echo "gpu tests done at $(now) s"; tail -3 $OUT/gpu_tests.txt; grep -E "^(FAILED|E  )" $OUT/gpu_tests.txt | head -8
wait $a $b $c
LIMIT=230 proxy fp8both 2 375 & a=$!
TOP=0 LIMIT=230 PY=$D/ref_train_gpt.py bench compile_ref & b=$!
wait $a $b
finish
