# Session 9, call 2: the FP8 gradient written as packed 4-byte words (micro-bench 2).
source records/_runs/2026-12-02_speed/s9/lib.sh
PYTHONPATH=. timeout 300 python3 records/_runs/2026-12-02_speed/s9/fp8_grad_micro2.py > $OUT/micro2.txt 2>&1
echo "micro2 rc=$? at $(now) s"; grep -E "^info:micro" $OUT/micro2.txt; grep -v "^info" $OUT/micro2.txt | tail -5
finish
