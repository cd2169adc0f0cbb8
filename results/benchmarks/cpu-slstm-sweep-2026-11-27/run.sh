#!/bin/bash
# SLSTM CPU target and a small batch: the tree of 48e3ee0 ("old": Python loop over diagonals) against
# e00b72e ("new": one C call per sweep), alternating in fresh processes; then the MCGSM L-BFGS bench.
# Usage: run.sh OLD_TREE NEW_TREE OUT_DIR (each tree a checkout with its own kernel cache).
set -u
OLD=$1; NEW=$2; OUT=$3; mkdir -p $OUT
uptime > $OUT/uptime_start.txt
for r in 1 2 3; do
  for tree in old new; do
    if [ $tree = old ]; then D=$OLD; else D=$NEW; fi
    (cd $D && RIDE_CACHE_DIR=$D/.ride_cache PYTHONPATH=$D python -m ride.bench --threads 2 --tune-malloc --layers 1 --hidden 64 --patch 22 --no-best-batch --reps 5 --json $OUT/slstm_b50_${tree}_r$r.json > $OUT/slstm_b50_${tree}_r$r.txt 2>&1)
    (cd $D && RIDE_CACHE_DIR=$D/.ride_cache PYTHONPATH=$D python -m ride.bench --threads 2 --tune-malloc --layers 1 --hidden 64 --patch 22 --batch 4 --no-best-batch --reps 7 --json $OUT/slstm_b4_${tree}_r$r.json > $OUT/slstm_b4_${tree}_r$r.txt 2>&1)
  done
done
for r in 1 2; do
  (cd $NEW && RIDE_CACHE_DIR=$NEW/.ride_cache PYTHONPATH=$NEW python -m ride.bench_mcgsm --threads 2 --pixels 50000 --iterations 50 --reps 1 --json $OUT/mcgsm_t2_r$r.json > $OUT/mcgsm_t2_r$r.txt 2>&1)
done
uptime > $OUT/uptime_end.txt
