# Session 9, call 4: the FP8 head's loss on the proxy (three seeds, all at once, against session 8's `six` arm,
# which is main's defaults), then the record step with --row_grads (alone on the GPU, call 3's compile cache).
source records/_runs/2026-12-02_speed/s9/lib.sh
load_cache
tokenize
for s in 0 1 2; do LIMIT=420 proxy fp8 $s 375 --fp8_head=true & sleep 3; done; wait
[ $(now) -lt 380 ] && TOP=20 LIMIT=$(( 560 - $(now) )) bench rowgrads --row_grads=true --fp8_head=true
finish
