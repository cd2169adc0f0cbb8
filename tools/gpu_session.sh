#!/usr/bin/env bash
# One prepared run on a lent GPU machine (results/benchmarks/gpu-*/README.md says what came of it):
#   1. the dead-leaves noise calibration, only with CALIBRATE=1 (done on 2026-11-26, the width is frozen),
#   2. the CUDA-marked tests, the CUDA-graph ones first, 3. `ride bench` on CUDA at batch 50 with the
#   step replayed from a CUDA graph (ride/cuda_graph.py) and eager beside it, 4. unless BENCH_ALL=0:
#   the Triton sweeps' batch search, the torch sweeps, evaluation, 5. with ROWS="v1 v2 ...": those
#   Table 3 rows at the paper scale (tools/gpu_rows.sh), trained with CUDA graphs where their tests passed.
# Usage there: bash tools/gpu_session.sh   (writes under $OUT; CPU dry run: DEVICE=cpu CALIBRATE=1 CAL_ARGS="--scale smoke --runs 2")
set -u
OUT=${OUT:-/tmp/gpu_out}
DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT"
LOG=$OUT/log.txt
export PYTHONUNBUFFERED=1 RIDE_SLSTM_NO_C=1   # no C-kernel build there: the CPU side of the tests uses torch ops
export PYTHONPATH=$PWD
if ls .whl/*.whl >/dev/null 2>&1; then   # jsonschema and its needs, carried as wheels
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD
fi
step() { echo "=== $(date -u +%H:%M:%S) $*" | tee -a "$LOG"; }
step env
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv 2>&1
  python3 -c "import torch; print('torch', torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())"
  python3 -c "import triton; print('triton', triton.__version__)" 2>&1; nproc; } 2>&1 | tee -a "$LOG"

if [ "${CALIBRATE:-0}" = 1 ]; then
  step calibrate
  timeout "${CAL_S:-270}" python3 -m ride.cli calibrate --out "$OUT/calibration.json" --work-dir /tmp/calib \
    --device "$DEVICE" --workers "$(nproc)" ${CAL_ARGS:-} 2>&1 | tee -a "$LOG"
  (cd /tmp/calib 2>/dev/null && tar czf "$OUT/calibration_runs.tgz" --exclude='*.h5' --exclude='*.sha256' . ) || true
fi

step tests, CUDA graphs
timeout "${GRAPH_TEST_S:-90}" python3 -m pytest -q -m cuda -p no:cacheprovider -k graph tests/test_cuda.py > "$OUT/pytest_graph.txt" 2>&1
GRAPH_OK=$?
tail -25 "$OUT/pytest_graph.txt" | tee -a "$LOG"
step tests
timeout "${TEST_S:-150}" python3 -m pytest -q -m cuda -p no:cacheprovider -k "not graph" tests/test_cuda.py tests/test_slstm_fast.py 2>&1 \
  | tail -25 | tee -a "$LOG"

BENCH="python3 -m ride.bench --device $DEVICE --layers 1 --hidden 64 --patch 22 --reps 10 --max-per-pixel-px 2000000"
step bench graph, batch 50
timeout "${GRAPH_S:-60}" $BENCH --cuda-graph --no-best-batch --no-memory --json "$OUT/bench_cuda_graph_b50.json" 2>&1 \
  | tee -a "$LOG"
if [ "${BENCH_ALL:-1}" = 1 ]; then
  step bench triton
  timeout "${BENCH_S:-80}" $BENCH --best-batch 256,1024,4096 --max-batch-px 2000000 --json "$OUT/bench_cuda.json" 2>&1 | tee -a "$LOG"
  step bench torch sweeps
  timeout "${BENCH_S:-70}" $BENCH --impl fused_torch --best-batch 1024 --max-batch-px 2000000 --no-memory \
    --json "$OUT/bench_cuda_torch.json" 2>&1 | tee -a "$LOG"
  step bench eval
  timeout "${EVAL_S:-30}" python3 -m ride.bench --device "$DEVICE" --eval --json "$OUT/bench_cuda_eval.json" 2>&1 | tee -a "$LOG"
fi
if [ -n "${ROWS:-}" ]; then
  [ "$GRAPH_OK" = 0 ] && GRAPH=1 || GRAPH=0
  step "rows $ROWS (RIDE_CUDA_GRAPH=$GRAPH)"
  OUT=$OUT DEVICE=$DEVICE RIDE_CUDA_GRAPH=$GRAPH timeout "${ROWS_S:-420}" bash tools/gpu_rows.sh $ROWS 2>&1 | tail -40 | tee -a "$LOG"
fi
step done
