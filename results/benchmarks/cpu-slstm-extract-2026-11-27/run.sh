#!/usr/bin/env bash
# SLSTM CPU target (1 layer, 64 hidden, 22x22, batch 50) at this commit against 0c8db29 (before the
# gather-based neighbourhood extraction, the in-place MCGSM input gradients and the one-buffer
# dL/dz of the first layer's backward), alternating process by process in one window; then the
# MCGSM L-BFGS benchmark at 1 and 2 threads. The old tree builds its kernels in its own cache.
# Usage: OLD=<checkout of 0c8db29> bash run.sh   (from the repository root; outputs next to this file)
set -euo pipefail
here=$(dirname "$0")
new=$(pwd)
old=${OLD:?checkout of 0c8db29}
uptime > "$here/uptime_start.txt"
for r in 1 2 3 4 5 6 7 8 9 10; do
  for v in old new; do
    tree=$new; cache=${RIDE_CACHE_DIR:-$HOME/.cache/ride}
    [ "$v" = old ] && tree=$old && cache=$old/.kernel-cache
    # the old tree's bench has no paired estimator: both runs print its record; the new one adds
    # frac_roofline_unpaired (the old tree's estimator) to its JSON
    (cd "$tree" && RIDE_CACHE_DIR=$cache PYTHONPATH="$tree" python -m ride.bench --threads 2 --tune-malloc --layers 1 --hidden 64 \
      --patch 22 --no-best-batch --reps 5 --json "$new/$here/slstm_${v}_r$r.json") > "$here/slstm_${v}_r$r.txt" 2>&1
  done
done
for t in 1 2; do
  for r in 1 2 3 4 5; do
    python -m ride.bench_mcgsm --threads $t --pixels 50000 --iterations 50 --reps 1 \
      --json "$here/mcgsm_t${t}_r$r.json" > "$here/mcgsm_t${t}_r$r.txt" 2>&1
  done
done
uptime > "$here/uptime_end.txt"
