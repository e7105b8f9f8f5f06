# Session 12, call 3 (call 2's machine, warm, its compile cache and shards): this tree at proxy seeds 3-5.
source records/_runs/2026-12-02_speed/s9/lib.sh
mkdir -p .gpu/cc; [ -e /tmp/cc ] || ln -s $PWD/.gpu/cc /tmp/cc
tokenize
for s in 3 4 5; do LIMIT=270 proxy rowsum $s 375 & done
wait
finish
