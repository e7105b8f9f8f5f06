# Session 13, call 4 (call 3's machine, warm): the previous commit's reference (325acce) on that machine, alone.
source records/_runs/2026-12-02_speed/s9/lib.sh; mkdir -p .gpu/cc; [ -e /tmp/cc ] || ln -s $PWD/.gpu/cc /tmp/cc; TOP=0 LIMIT=150 PY=records/_runs/2026-12-02_speed/s12/ref_train_gpt.py bench ref; finish
