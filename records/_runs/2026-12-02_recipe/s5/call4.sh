# Session 5, call 4: key offset + XSA, seeds 1 and 2 at once (seed 0 in call 3: 2.9768 against the control's 3.1128).
source .gpu/lib.sh
proxy koxsa 1 375 --key_offset=true --xsa_layers=1,3,4,7,8,10 & a=$!
proxy koxsa 2 375 --key_offset=true --xsa_layers=1,3,4,7,8,10 & b=$!
wait $a $b
echo "total $(now) s"
