# Session 10, call 1: micro-bench 3 alone on the GPU, then the proxy A/B of the FP8 head's new backward
# (--fp8_head=false against the default), seeds 0 and 1, both arms at once.
source records/_runs/2026-12-02_speed/s9/lib.sh
load_cache; tokenize
PYTHONPATH=. timeout 170 python3 records/_runs/2026-12-02_speed/s10/micro3.py > $OUT/micro3.txt 2>&1; echo "micro3 rc=$? at $(now) s"
grep -v "^$" $OUT/micro3.txt | tail -30
for seed in 0 1; do
  LIMIT=230 proxy bf16head $seed 375 --fp8_head=false & a=$!
  LIMIT=230 proxy fp8head $seed 375 & b=$!
  wait $a $b
done
save_cache; finish
