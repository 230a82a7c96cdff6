#!/usr/bin/env bash
# Trains the tiny bundled models side by side on one CUDA GPU, each sized by --fit-minutes to end
# by END_SECONDS after this script starts; exports land in OUT:
#   scripts/gpu_train_zoo.sh OUT END_SECONDS SOURCES [nuwa] [imagen] [phenaki]
# By default each model trains from scratch the stages that decide what a prompt draws:
#   nuwa     tokenizer, then transformer
#   imagen   the base stage, over the bundle's text encoder and SR stage (CPU-trained)
#   phenaki  tokenizer, then transformer, over the bundle's text encoder (CPU-trained)
# Per model, instead (space-separated lists of models; 1 = every model):
#   FRESH="phenaki"  only the last stage, from scratch, over the export's other stages
#                    (--frozen-from)
#   TUNE="nuwa"      the last stage fine-tuned from the export (--init-from), at lr 3e-4
#   CODES="phenaki"  the transformer trains on the tokenizer's precomputed codes of CODE_CLIPS
#                    (default 200000) train clips (python -m jzoo.cache_codes, CODE_WORKERS
#                    rendering processes, default 12) instead of rendering and encoding clips
# "The export" is SOURCES/<model>-tiny-shapes when SOURCES holds one (the exports of an earlier
# run), else the bundled model. OVERRIDES_<model>="--config.KEY=VALUE ..." adds config overrides
# to the last stage (e.g. OVERRIDES_phenaki=--config.transformer.text_positions=True).
# The tiny models leave a GPU mostly idle one at a time, so they share it (each process takes
# at most a quarter of its memory). OUT/<model>.tgz holds the export and each stage's
# metrics.jsonl and config.json; logs in OUT/<model>.log and OUT/all.log.
set -uo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "$1"); end=$2; sources=$(realpath -m "$3"); shift 3
mkdir -p "$out"
export JAX_PLATFORMS=${JAX_PLATFORMS:-cuda} PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=0.24
PY=${PYTHON:-python3}
work=/tmp/zoo

minutes_until() {  # minutes from now until END less RESERVE seconds, times SHARE
  "$PY" -c "print(round(max(0.5, ($end - $SECONDS - $1) * $2 / 60), 2))"
}
train() {  # train MODEL STAGE BATCH FIT_MINUTES [OVERRIDES...]: a fresh stage, sized to the time
  local model=$1 stage=$2 batch=$3 minutes=$4; shift 4
  echo "== $model/$stage ($(date +%T)): batch $batch, --fit-minutes $minutes" | tee -a "$out/all.log"
  # The trainer's exit status is not trusted alone (a CUDA build once aborted at interpreter
  # exit after the final checkpoint); the export below checks that the checkpoints exist.
  "$PY" -m jzoo.train --config "$model:tiny_shapes" --config.stage="$stage" \
      --workdir "$work/$model" --no-progress --config.train.batch_size="$batch" \
      --config.train.steps=100000 --config.train.log_every=100 --config.train.checkpoint_every=100000 \
      --fit-minutes "$minutes" "$@" >>"$out/$model.log" 2>&1
  echo "== $model/$stage exit $? ($(date +%T))" | tee -a "$out/all.log"
}
finish() {  # finish MODEL [EXPORT OVERRIDES...]: export and pack
  local model=$1; shift
  "$PY" -m jzoo.export --workdir "$work/$model" --name "$model-tiny-shapes" \
      --out "$work/export/$model-tiny-shapes" "$@" >>"$out/$model.log" 2>&1 \
    && echo "== $model exported ($(date +%T))" | tee -a "$out/all.log" \
    || echo "== $model export FAILED" | tee -a "$out/all.log"
  tar -czf "$out/$model.tgz" -C "$work" --exclude=checkpoints --exclude=tensorboard "$model" \
      $( [ -d "$work/export/$model-tiny-shapes" ] && echo "export/$model-tiny-shapes" )
}

listed() {  # listed LIST MODEL: is MODEL in the space-separated LIST (or LIST = 1)?
  [ "$1" = 1 ] || [[ " $1 " == *" $2 "* ]]
}
source_of() {  # the export MODEL's frozen or fine-tuned stages come from
  if [ -d "$sources/$1-tiny-shapes" ]; then echo "$sources/$1-tiny-shapes"; else echo "$1-tiny-shapes"; fi
}
last() {  # last MODEL STAGE BATCH [OVERRIDES...]: the last stage, as TUNE/FRESH/default say
  local model=$1 stage=$2 batch=$3; shift 3
  local extra="OVERRIDES_$model" mode=()
  if listed "${TUNE:-}" "$model"; then
    mode=(--init-from "$(source_of "$model")" --config.optim.lr=3e-4 --config.optim.warmup_steps=50)
  elif listed "${FRESH:-}" "$model" || [ "$model" = imagen ]; then
    mode=(--frozen-from "$(source_of "$model")")
  fi
  # shellcheck disable=SC2086  # the overrides are words
  train "$model" "$stage" "$batch" "$(minutes_until 40 1.0)" "${mode[@]}" "$@" ${!extra:-}
}
whole() {  # whole MODEL: only the last stage when TUNE or FRESH lists MODEL
  ! listed "${TUNE:-}" "$1" && ! listed "${FRESH:-}" "$1"
}

run_nuwa() {
  whole nuwa && train nuwa tokenizer 32 "$(minutes_until 60 0.3)"
  last nuwa transformer 64
  finish nuwa
}
run_imagen() {
  last imagen base 64
  finish imagen --config.sample.guidance=2.0
}
run_phenaki() {
  whole phenaki && train phenaki tokenizer 32 "$(minutes_until 60 0.45)" \
      --frozen-from "$(source_of phenaki)"
  local codes=()
  if listed "${CODES:-}" phenaki; then  # the transformer reads precomputed codes, not pixels
    echo "== phenaki/code_cache ($(date +%T)): ${CODE_CLIPS:-200000} clips" | tee -a "$out/all.log"
    # The tokenizer: the one trained above when there is one, else the export's.
    "$PY" -m jzoo.cache_codes --config phenaki:tiny_shapes --workdir "$work/phenaki" \
        --out "$work/phenaki/code_cache" --limit "${CODE_CLIPS:-200000}" --batch-size 256 \
        --workers "${CODE_WORKERS:-12}" --config.train.frozen_from="$(source_of phenaki)" \
        >>"$out/phenaki.log" 2>&1 && codes=(--config.tokenizer.cache="$work/phenaki/code_cache")
    echo "== phenaki/code_cache: ${codes[*]:-FAILED, training on pixels} ($(date +%T))" \
        | tee -a "$out/all.log"
  fi
  last phenaki transformer 64 $(whole phenaki && echo --frozen-from "$(source_of phenaki)") \
      "${codes[@]}"
  finish phenaki
}

rm -rf "$work"; mkdir -p "$work"
pids=()
for model in "$@"; do
  "run_$model" & pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv >>"$out/all.log" 2>&1
echo "== done in $SECONDS s" | tee -a "$out/all.log"
