#!/bin/bash
# Quiet-machine benchmarks: SLSTM target (old tree d4eb89f vs new tree, alternating), MCGSM L-BFGS (new tree).
set -u
OUT=/work/bench2/out; mkdir -p $OUT
OLD=/work/seed1; NEW=/work/main
export RIDE_CACHE_DIR_OLD=/work/seed1/.ride_cache
uptime > $OUT/uptime_start.txt
for r in 1 2 3; do
  for tree in old new; do
    if [ $tree = old ]; then D=$OLD; C=/work/seed1/.ride_cache; else D=$NEW; C=$HOME/.cache/ride; fi
    (cd $D && RIDE_CACHE_DIR=$C PYTHONPATH=$D /usr/bin/time -v python -m ride.bench --threads 2 --tune-malloc --layers 1 --hidden 64 --patch 22 --no-best-batch --reps 5 --json $OUT/slstm_${tree}_r$r.json > $OUT/slstm_${tree}_r$r.txt 2>&1)
  done
done
for r in 1 2 3; do
  for t in 1 2; do
    (cd $NEW && PYTHONPATH=$NEW /usr/bin/time -v python -m ride.bench_mcgsm --threads $t --pixels 50000 --iterations 50 --reps 1 --json $OUT/mcgsm_t${t}_r$r.json > $OUT/mcgsm_t${t}_r$r.txt 2>&1)
  done
done
uptime > $OUT/uptime_end.txt
