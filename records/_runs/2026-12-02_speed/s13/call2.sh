# Session 13, call 2 (call 1's machine, warm, its compile cache): the record step alone, each run by itself: this
# tree again, session 12's tree (no row-block index fix), the previous commit's reference (325acce), then this tree
# traced, with the trace's idle gaps and optimizer ranges read by s13/trace_gaps.py; then proxy seeds 1 and 3.
source records/_runs/2026-12-02_speed/s9/lib.sh
D=records/_runs/2026-12-02_speed/s13
mkdir -p .gpu/cc; [ -e /tmp/cc ] || ln -s $PWD/.gpu/cc /tmp/cc
TOP=0 LIMIT=90 bench new_2
TOP=0 LIMIT=90 PY=$D/s12_train_gpt.py bench s12
TOP=0 LIMIT=120 PY=records/_runs/2026-12-02_speed/s12/ref_train_gpt.py bench ref
TOP=40 LIMIT=100 bench new_trace --bench_trace=/tmp/new_trace.json
timeout 120 python3 $D/trace_gaps.py /tmp/new_trace.json 30 > $OUT/trace_gaps.txt 2>&1; echo "gaps rc=$? at $(now) s"
cat $OUT/trace_gaps.txt | head -80
# Call 1's seed 1 ran out of memory beside the GPU tests: again, with seed 3, after the benches.
for s in 1 3; do LIMIT=200 proxy rowsum $s 375 & done
wait
finish
