# Session 7, call 2: issue 14's ms/step clause, each run alone on the GPU: the proxy step of main's defaults against
# the code before the recipe work (6af9f86's train_gpt.py, recovered from the baseline's logs).
source .gpu/lib.sh
benchfile() {  # name file flags...
  local name=$1 file=$2; shift 2
  mkdir -p $OUT/bench
  timeout 280 python3 $file --bench_steps=8 --log_dir=$OUT/bench --run_id=$name "$@" \
    > /dev/null 2>>$OUT/bench/stderr_$name.txt
  echo "bench $name rc=$? at $(now) s"; grep -E "info:(bench|warmup|ready|built)" $OUT/bench/$name.txt | grep -v "info:bench share"
}
benchfile proxy_now .gpu/main_train_gpt.py --preset=proxy --warmup_steps=2
benchfile proxy_base .gpu/base_train_gpt.py --preset=proxy --warmup_steps=1
PY=.gpu/main_train_gpt.py PARALLEL=2 queue 560 <<JOBS
200 ko 2 375 --xsa_layers=
200 xsa 2 375 --key_offset=false
JOBS
echo "total $(now) s"
cd $OUT && tar czf logs.tar.gz */ && rm -rf */
