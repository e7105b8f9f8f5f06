# Session 9, call 5 (warm machine, same tree): a second bench of the bf16 head, the warm start on a full cache.
source records/_runs/2026-12-02_speed/s9/lib.sh; TOP=0 LIMIT=120 bench bf16_2; finish
