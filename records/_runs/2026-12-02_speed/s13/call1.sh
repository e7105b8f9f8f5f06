# Session 13, call 1: this tree (session 12's row tables + NorMuon's row-block index kept on the GPU) at proxy
# seeds 0-2 beside the GPU tests it touches (the new sync test among them), then the record step alone, cold.
source records/_runs/2026-12-02_speed/s9/lib.sh
mkdir -p .gpu/cc; [ -e /tmp/cc ] || ln -s $PWD/.gpu/cc /tmp/cc
tokenize
for s in 0 1 2; do LIMIT=330 proxy rowsum $s 375 & done
timeout 300 python3 -m pytest -q -m gpu tests/test_model.py tests/test_kernels.py tests/test_optimizers.py \
  -k "never_waits or row_table or add_rows or normuon or adam_kernel" > $OUT/gpu_tests.txt 2>&1
echo "gpu tests rc=$? at $(now) s"; tail -1 $OUT/gpu_tests.txt; grep -E "^(FAILED|E  )" $OUT/gpu_tests.txt | head -12
wait
TOP=0 LIMIT=200 bench new
finish
