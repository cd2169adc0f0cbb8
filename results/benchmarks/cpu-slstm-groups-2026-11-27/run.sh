#!/usr/bin/env bash
# Image groups in one C call (2026-11-27): the training step with and without them, alternating
# step by step; the forward sweep's cost of two OpenMP threads; then the SLSTM CPU target and the
# MCGSM L-BFGS benchmark at this commit, five rounds.
# Usage: bash results/benchmarks/cpu-slstm-groups-2026-11-27/run.sh   (from the repository root)
# Later windows: ROUNDS="6 7 8 9 10" BENCH_ONLY=1 bash .../run.sh (the benchmarks only).
set -euo pipefail
here=$(dirname "$0")
rounds=${ROUNDS:-1 2 3 4 5}
first=${rounds%% *}
tag=${BENCH_ONLY:+_$first}
uptime > "$here/uptime_start$tag.txt"
if [ -z "${BENCH_ONLY:-}" ]; then
  for r in 1 2 3; do python "$here/step_ab.py"; done > "$here/step_ab.txt" 2>&1
  for r in 1 2; do python "$here/sweep_threads.py"; done > "$here/sweep_threads.txt" 2>&1
fi
for r in $rounds; do
  python -m ride.bench --threads 2 --tune-malloc --layers 1 --hidden 64 --patch 22 --no-best-batch --reps 5 \
    --json "$here/slstm_r$r.json" > "$here/slstm_r$r.txt" 2>&1
  for t in 1 2; do
    python -m ride.bench_mcgsm --threads $t --pixels 50000 --iterations 50 --reps 1 \
      --json "$here/mcgsm_t${t}_r$r.json" > "$here/mcgsm_t${t}_r$r.txt" 2>&1
  done
done
uptime > "$here/uptime_end$tag.txt"
