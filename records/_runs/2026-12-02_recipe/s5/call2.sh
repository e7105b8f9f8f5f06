# Session 5, call 2: proxy arms, two runs at a time: new3 (key offset + XSA + document truncation) against the
# control (the preset as it is; its seed 0 checks that all375 of session 4 reproduces), then the 4x-batch arm.
source .gpu/lib.sh
N3="--key_offset=true --xsa_layers=1,3,4,7,8,10 --doc_max_tokens=2048"
queue 575 <<JOBS
200 new3 0 375 $N3
200 control 0 375
130 new3 1 375 $N3
130 new3 2 375 $N3
130 batch4 0 94 --slices_per_step=4
130 batch4 1 94 --slices_per_step=4
100 batch4 2 94 --slices_per_step=4
JOBS
echo "total $(now) s"
