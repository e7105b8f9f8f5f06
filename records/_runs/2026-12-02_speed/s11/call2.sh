# Session 11, call 2: the proxy A/B of --fp8_mlp on four of the five text files, as session 10's (whose FP8-head arm,
# s10/fp8head, is this tree's default path: --fp8_mlp=false). Two at a time: FP8 MLP seed 0 beside the default's
# seed 0 (again, on this machine), then FP8 MLP seeds 1 and 2.
source records/_runs/2026-12-02_speed/s9/lib.sh
D=records/_runs/2026-12-02_speed/s11
tokenize
LIMIT=250 proxy fp8mlp 0 375 --fp8_mlp=true & a=$!
LIMIT=250 proxy default 0 375 & b=$!
wait $a $b
LIMIT=200 proxy fp8mlp 1 375 --fp8_mlp=true & a=$!
LIMIT=200 proxy fp8mlp 2 375 --fp8_mlp=true & b=$!
wait $a $b
finish
