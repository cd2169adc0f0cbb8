#!/usr/bin/env bash
# The two CPU targets of issue 11 (SLSTM training step, MCGSM L-BFGS refinement) on an AMD EPYC
# with AVX-512 (2026-11-27), five rounds per window, nothing else running.
# Usage: bash results/benchmarks/cpu-amd-epyc-2026-11-27/run.sh   (from the repository root)
# Later windows: ROUNDS="6 7 8 9 10" bash .../run.sh
set -euo pipefail
here=$(dirname "$0")
rounds=${ROUNDS:-1 2 3 4 5}
first=${rounds%% *}
lscpu > "$here/lscpu.txt"
git rev-parse HEAD > "$here/commit_$first.txt"
uptime > "$here/uptime_start_$first.txt"
for r in $rounds; do
  python -m ride.bench --threads 2 --tune-malloc --layers 1 --hidden 64 --patch 22 --no-best-batch --reps 5 \
    --json "$here/slstm_r$r.json" > "$here/slstm_r$r.txt" 2>&1
  for t in 1 2; do
    python -m ride.bench_mcgsm --threads $t --pixels 50000 --iterations 50 --reps 1 \
      --json "$here/mcgsm_t${t}_r$r.json" > "$here/mcgsm_t${t}_r$r.txt" 2>&1
  done
done
uptime > "$here/uptime_end_$first.txt"
