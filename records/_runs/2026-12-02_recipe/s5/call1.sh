# Session 5, call 1: the record-step bench (cold, warm + trace, FP8 + trace) alone; then the GPU tests beside
# two proxy runs; then proxy jobs until the deadline.
source .gpu/lib.sh
bench cold --compile_cache=/tmp/cc
bench warm --compile_cache=/tmp/cc --bench_trace=$OUT/bench/bf16.json.gz
bench fp8 --compile_cache=/tmp/cc --fp8_head=true --bench_trace=$OUT/bench/fp8.json.gz
rm -f $OUT/bench/*.json.gz  # too large to bring back; the kernel tables are in the logs
N3="--key_offset=true --xsa_layers=1,3,4,7,8,10 --doc_max_tokens=2048"
( python3 -m pytest -q -m gpu tests/ > $OUT/gpu_tests.txt 2>&1; echo "rc=$? at $(now) s" >> $OUT/gpu_tests.txt ) &
disown  # not one of the queue's two proxy slots
queue 570 <<JOBS
200 new3 0 375 $N3
200 control 0 375
130 new3 1 375 $N3
JOBS
wait
while ! grep -q "^rc=" $OUT/gpu_tests.txt; do sleep 2; done; tail -4 $OUT/gpu_tests.txt
echo "total $(now) s"
