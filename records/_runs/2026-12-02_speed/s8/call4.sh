# Session 8, call 4 (tree: call 3's + rotary frequencies built on the CPU, the fix of call 3's bench failure): the
# record step alone on the GPU: the new defaults (cold compile), with the fused FP8 head, then the defaults again
# (warm start, compile cache from the first).
source .gpu/lib.sh
LIMIT=230 bench new_bf16
LIMIT=200 bench new_fp8 --fp8_head=true
[ $(now) -lt 470 ] && LIMIT=$(( 545 - $(now) )) bench new_bf16_2
echo "total $(now) s"
cd $OUT && tar czf logs.tar.gz */ && rm -rf */
