# Session 5, call 3: which of new3's three flags costs 0.06: document truncation alone, and key offset + XSA, seed 0.
source .gpu/lib.sh
PARALLEL=2 queue 470 <<JOBS
250 trunc 0 375 --doc_max_tokens=2048
250 koxsa 0 375 --key_offset=true --xsa_layers=1,3,4,7,8,10
JOBS
echo "total $(now) s"
cd $OUT && tar czf logs.tar.gz */ && rm -rf */
