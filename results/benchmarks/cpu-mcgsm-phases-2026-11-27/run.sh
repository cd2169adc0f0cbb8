#!/usr/bin/env bash
# MCGSM kernel in row groups (57a4f4c) against 272c27f, and the MCGSM L-BFGS benchmark with its
# roofline timed around every L-BFGS step. Run from the repository root on a quiet machine:
#   bash results/benchmarks/cpu-mcgsm-phases-2026-11-27/run.sh
set -euo pipefail
out=results/benchmarks/cpu-mcgsm-phases-2026-11-27
old=272c27f new=57a4f4c
tmp=$(mktemp -d)
trap 'git worktree remove --force "$tmp/old" 2>/dev/null; git worktree remove --force "$tmp/new" 2>/dev/null; rm -rf "$tmp"' EXIT
for tree in old new; do
    git worktree add -q --detach "$tmp/$tree" "${!tree}"
    so=$(cd "$tmp/$tree" && RIDE_CACHE_DIR="$tmp/cache-$tree" PYTHONPATH=. python -c \
        "from ride.kernels import build; print(build.build_library())")
    cp "$so" "$tmp/$tree.so"
done
uptime > "$out/uptime_start.txt"
# training's L-BFGS refinement, every kernel call in both builds: bitwise the same?
PYTHONPATH="$tmp/new" RIDE_CACHE_DIR="$tmp/cache-new" python "$out/mcgsm_training_identity.py" \
    "$tmp/old.so" "$tmp/new.so" > "$out/training_identity.txt"
for t in 2 1; do
    PYTHONPATH="$tmp/new" RIDE_CACHE_DIR="$tmp/cache-new" python "$out/mcgsm_kernel_ab.py" "$t" 8 \
        "$tmp/old.so" "$tmp/new.so" > "$out/ab_t$t.txt"
done
for r in 1 2 3 4 5; do
    (cd "$tmp/new" && RIDE_CACHE_DIR="$tmp/cache-new" python -m ride.bench_mcgsm --threads 2 --pixels 50000 \
        --iterations 50 --reps 1 --json "$OLDPWD/$out/mcgsm_t2_r$r.json") > "$out/mcgsm_t2_r$r.txt"
    if [ "$r" -le 3 ]; then
        (cd "$tmp/new" && RIDE_CACHE_DIR="$tmp/cache-new" python -m ride.bench_mcgsm --threads 1 --pixels 50000 \
            --iterations 50 --reps 1 --json "$OLDPWD/$out/mcgsm_t1_r$r.json") > "$out/mcgsm_t1_r$r.txt"
        # the previous benchmark (GEMMs timed once, before both runs) and kernel, for comparison
        (cd "$tmp/old" && RIDE_CACHE_DIR="$tmp/cache-old" python -m ride.bench_mcgsm --threads 2 --pixels 50000 \
            --iterations 50 --reps 1) > "$out/mcgsm_old272c27f_t2_r$r.txt"
    fi
done
uptime > "$out/uptime_end.txt"
