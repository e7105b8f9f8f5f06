# Session 7, call 1 (tree: gpu-next). Issue 14's ablations on main's code (.gpu/main_train_gpt.py): key offset only
# (--xsa_layers=) and XSA only (--key_offset=false), three seeds each, two runs at a time; beside them the GPU tests
# of gpu-next (timing of the proxies is not used).
source .gpu/lib.sh
( timeout 300 python3 -m pytest -q -m gpu tests/ > $OUT/gpu_tests.txt 2>&1; echo "gpu tests rc=$? at $(now) s"; tail -3 $OUT/gpu_tests.txt ) &
PY=.gpu/main_train_gpt.py PARALLEL=2 queue 585 <<JOBS
270 ko 0 375 --xsa_layers=
270 xsa 0 375 --key_offset=false
155 ko 1 375 --xsa_layers=
155 xsa 1 375 --key_offset=false
155 ko 2 375 --xsa_layers=
155 xsa 2 375 --key_offset=false
JOBS
wait
echo "total $(now) s"
cd $OUT && tar czf logs.tar.gz */ && rm -rf */
