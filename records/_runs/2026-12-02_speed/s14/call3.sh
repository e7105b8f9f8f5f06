# Session 14, call 3 (run as one command line, on call 2's machine and its compile cache /tmp/cc): this tree twice
# and dd8259f once more, each alone, all warm. Needs s14/ref_train_gpt.py as call 2 does.
source records/_runs/2026-12-02_speed/s9/lib.sh; D=records/_runs/2026-12-02_speed/s14
ls /tmp/cc >/dev/null 2>&1 && echo "cache present: $(du -sh /tmp/cc | cut -f1)"
TOP=0 LIMIT=120 bench main_2; TOP=0 LIMIT=120 PY=$D/ref_train_gpt.py bench ref_2; TOP=0 LIMIT=120 bench main_3; finish
