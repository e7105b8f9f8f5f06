# Session 13, call 3 (a fresh machine): AOTAutograd's cache allowed to keep RowTable's autograd.Function
# (use_compile_cache). GPU tests it and this session touch; the same tests against mutated trees, which must
# fail: without the flag (the cache test), and session 12's NorMuon (the sync test). Then the record step cold,
# then twice warm, each alone: start-up and step time.
source records/_runs/2026-12-02_speed/s9/lib.sh
D=records/_runs/2026-12-02_speed/s13
mkdir -p .gpu/cc; [ -e /tmp/cc ] || ln -s $PWD/.gpu/cc /tmp/cc
timeout 240 python3 -m pytest -q -m gpu tests/test_model.py -k "aot_autograds_cache or never_waits or row_table" \
  > $OUT/gpu_tests.txt 2>&1; echo "gpu tests rc=$? at $(now) s"; tail -1 $OUT/gpu_tests.txt
grep -E "^(FAILED|E  )" $OUT/gpu_tests.txt | head -12
rm -rf /tmp/mut && mkdir -p /tmp/mut && cp -r tests data /tmp/mut/ && cp pytest.ini /tmp/mut/ && mkdir /tmp/mut/records && cp records/*.py /tmp/mut/records/
grep -v "autograd_cache_allow_custom_autograd_functions = True" train_gpt.py > /tmp/mut/train_gpt.py
(cd /tmp/mut && timeout 150 python3 -m pytest -q -m gpu tests/test_model.py -k "aot_autograds_cache" > $OUT/mut_flag.txt 2>&1)
echo "mutant without the flag rc=$? (must fail) at $(now) s"; tail -1 $OUT/mut_flag.txt; grep -E "^E  " $OUT/mut_flag.txt | head -4
cp $D/s12_train_gpt.py /tmp/mut/train_gpt.py
(cd /tmp/mut && timeout 150 python3 -m pytest -q -m gpu tests/test_model.py -k "never_waits" > $OUT/mut_sync.txt 2>&1)
echo "mutant with session 12's NorMuon rc=$? (must fail) at $(now) s"; tail -1 $OUT/mut_sync.txt; grep -E "^E  " $OUT/mut_sync.txt | head -4
TOP=0 LIMIT=200 bench cold
TOP=0 LIMIT=90 bench warm
TOP=0 LIMIT=90 bench warm_2
finish
