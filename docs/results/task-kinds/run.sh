set -e
H=/work/main/.venv/bin/hepfm
S=/work/study-data
$H generate toptag --n-jets 3000 --unlabeled --detector cms --out pre_cms.h5 --seed 201 --workers 2 --no-progress
$H generate toptag --n-jets 1500 --unlabeled --pileup 20 --detector atlas --out pre_pu20.h5 --seed 202 --workers 2 --no-progress
$H generate jetclass --n-jets 3000 --unlabeled --out pre_jc.h5 --seed 203 --workers 2 --no-progress
$H generate jetclass --n-jets 2000 --out jc_train.h5 --seed 204 --workers 2 --no-progress
$H generate jetclass --n-jets 1000 --out jc_val.h5 --seed 205 --workers 2 --no-progress
$H generate jetclass --n-jets 1000 --out jc_test.h5 --seed 206 --workers 2 --no-progress
for k in crossdet pileup linsep; do start=$(date +%s); $H study run $k.yaml --out out-$k --workers 2; echo "$k wall $(( $(date +%s) - start )) s"; done
echo KINDS_DONE
