#!/usr/bin/env bash
# Paper-scale Table 3 rows on a lent GPU with the workflow's own commands (rules deadleaves,
# model_config, train, evaluate of workflow/rules/), for machines without Snakemake:
#   bash tools/gpu_rows.sh mcgsm12 [more variants]   -> $OUT/<variant>_{train,eval}.json, <variant>_model.pt
# Training resumes from its checkpoint (as the workflow's rule does): a row cut off by a time limit
# goes on in the next call on the same machine. Training replays CUDA graphs unless RIDE_CUDA_GRAPH=0.
set -u
OUT=${OUT:-/tmp/gpu_out}
DEVICE=${DEVICE:-cuda}
SCALE=${SCALE:-paper}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 RIDE_SLSTM_NO_C=1 PYTHONPATH=$PWD
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD
fi
DATA=/tmp/rows/datasets/deadleaves/$SCALE
if [ ! -f "$DATA/test.h5" ]; then
  GEN=$(python3 -c "
from ride import experiments as E
p = E.dataset_params(E.load_config(), '$SCALE', 'deadleaves')
print(p['num_images'], p['num_test'], p['size'], p['seed'], ' '.join(f'--param {k}={v}' for k, v in p['generator'].items()))")
  read -r NI NT SZ SEED PARAMS <<< "$GEN"
  python3 -m ride.cli deadleaves --out-train "$DATA/train.h5" --out-test "$DATA/test.h5" --num-images "$NI" \
    --num-test "$NT" --size "$SZ" --seed "$SEED" $PARAMS --workers "$(nproc)"
fi
for v in "$@"; do
  RUN=/tmp/rows/runs/$SCALE/table3/$v
  mkdir -p "$RUN"
  python3 -c "
import json
from ride import experiments as E
c = E.load_config()
json.dump(E.train_config(c, '$SCALE', 'table3', '$v'), open('$RUN/config.json', 'w'), indent=2)
o = E.eval_options(c, '$SCALE', 'table3', '$v')
print(f\"--tile {o['tile']}\" + (f\" --max-tiles {o['max_tiles']}\" if o['max_tiles'] else '') + (' --ensemble' if o['ensemble'] else ''))" > "$RUN/eval_args"
  python3 -m ride.cli train --config "$RUN/config.json" --data "$DATA/train.h5" --out-dir "$RUN" --resume --device "$DEVICE" \
    --seed 0 --no-progress && \
  python3 -m ride.cli evaluate --model "$RUN/model.pt" --data "$DATA/test.h5" --out "$RUN/eval.json" \
    $(cat "$RUN/eval_args") --device "$DEVICE" | tail -12
  for f in train.json eval.json model.pt; do cp "$RUN/$f" "$OUT/${v}_$f" 2>/dev/null; done
done
