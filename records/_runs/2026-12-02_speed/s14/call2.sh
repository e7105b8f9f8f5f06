# Session 14, call 2: the record step, each run alone on the GPU: this tree cold and then warm (start-up and step
# time), and dd8259f (session 13's last tree, s14/ref_train_gpt.py, rebuilt with git show) as the reference.
source records/_runs/2026-12-02_speed/s9/lib.sh
D=records/_runs/2026-12-02_speed/s14
TOP=0 LIMIT=200 bench main_cold
TOP=0 LIMIT=90 bench main_warm
TOP=0 LIMIT=200 PY=$D/ref_train_gpt.py bench ref_dd8259f
finish
