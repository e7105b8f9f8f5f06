# Session 8, call 1 (tree: main 47c8bce). Issue 14's six unmeasured tricks as one proxy arm ("six"), and the same
# without paired heads ("five"), three seeds each, two runs at a time; beside them every GPU test.
source .gpu/lib.sh
( timeout 330 python3 -m pytest -q -m gpu tests/ > $OUT/gpu_tests.txt 2>&1; echo "gpu tests rc=$? at $(now) s"; tail -3 $OUT/gpu_tests.txt ) &
SIX="--backout_layer=7 --bigram_signs=8192 --paired_head_layers=0,2,5,9 --muon_qk_head_pairs=true --attn_source=7 --zero_attn_out=false"
FIVE="--backout_layer=7 --bigram_signs=8192 --paired_head_layers= --muon_qk_head_pairs=true --attn_source=7 --zero_attn_out=false"
PARALLEL=2 queue 585 <<JOBS
280 six 0 375 $SIX
280 five 0 375 $FIVE
160 six 1 375 $SIX
160 five 1 375 $FIVE
160 six 2 375 $SIX
160 five 2 375 $FIVE
JOBS
wait
echo "total $(now) s"
cd $OUT && tar czf logs.tar.gz */ && rm -rf */
