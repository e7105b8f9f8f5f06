# Session 11, call 4 (call 3's machine, warm, its compile cache in .gpu/cc): the record step, each alone on the GPU:
# this tree at micro-bench 7's tile (FP8 in both MLP matmuls), the previous commit (FP8 in the first only), this
# tree again, the last one traced.
source records/_runs/2026-12-02_speed/s9/lib.sh
D=records/_runs/2026-12-02_speed/s11
mkdir -p .gpu/cc; [ -e /tmp/cc ] || ln -s $PWD/.gpu/cc /tmp/cc
[ -s .gpu/fp8_config ] && sed -i "s/\"fp8\": (128, 256, 128, 8, 3)}/\"fp8\": ($(cat .gpu/fp8_config))}/" train_gpt.py
grep -n '"fp8": (' train_gpt.py
TOP=0 LIMIT=120 bench new
TOP=0 LIMIT=120 PY=$D/ref_train_gpt.py bench ref
TOP=24 LIMIT=120 bench new_2 --bench_trace=/tmp/new_2_trace.json
finish
