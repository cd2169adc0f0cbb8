#!/usr/bin/env bash
# The MCGSM pass in runs of blocks (b0b513a) against cff43fd, kernels alone, alternating call by
# call; the SLSTM kernel variants left out, alternating training steps; then the MCGSM L-BFGS
# benchmark and the SLSTM CPU target at this commit, five times each.
# Usage: bash results/benchmarks/cpu-mcgsm-runs-2026-11-27/run.sh   (from the repository root)
# Later windows: ROUNDS="6 7 8 9 10" BENCH_ONLY=1 bash .../run.sh (the benchmarks only; uptime_*_6.txt).
set -euo pipefail
here=$(dirname "$0")
rounds=${ROUNDS:-1 2 3 4 5}
first=${rounds%% *}
tag=${BENCH_ONLY:+_$first}
uptime > "$here/uptime_start$tag.txt"
if [ -z "${BENCH_ONLY:-}" ]; then
for r in 1 2 3; do
  for args in "2 float64 12 50000" "1 float64 12 50000" "2 float32 64 18000"; do
    python "$here/kernel_ab.py" cff43fd b0b513a $args
  done
done > "$here/kernel_ab.txt" 2>&1
for v in nop_gemm free_gates fused_bias dynamic_chunks big_then_small; do
  python "$here/slstm_variants.py" $v
done > "$here/slstm_variants.txt" 2>&1
fi
for r in $rounds; do
  for t in 1 2; do
    python -m ride.bench_mcgsm --threads $t --pixels 50000 --iterations 50 --reps 1 \
      --json "$here/mcgsm_t${t}_r$r.json" > "$here/mcgsm_t${t}_r$r.txt" 2>&1
  done
  python -m ride.bench --threads 2 --tune-malloc --layers 1 --hidden 64 --patch 22 --no-best-batch --reps 5 \
    --json "$here/slstm_r$r.json" > "$here/slstm_r$r.txt" 2>&1
done
uptime > "$here/uptime_end$tag.txt"
