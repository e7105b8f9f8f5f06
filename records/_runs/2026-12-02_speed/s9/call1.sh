# Session 9, call 1: the FP8 gradient kernel's micro-bench (variants, references, the head's GEMMs), then main's
# record step alone on the GPU with the kernel profile (cold compile), then its compile cache sent back.
source records/_runs/2026-12-02_speed/s9/lib.sh
PYTHONPATH=. timeout 200 python3 records/_runs/2026-12-02_speed/s9/fp8_grad_micro.py > $OUT/micro.txt 2>&1
echo "micro rc=$? at $(now) s"; grep -E "^info:micro" $OUT/micro.txt; tail -3 $OUT/micro.txt
TOP=40 LIMIT=300 bench main_trace --bench_trace=/tmp/main_trace.json.gz
save_cache
finish
