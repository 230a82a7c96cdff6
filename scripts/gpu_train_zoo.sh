#!/usr/bin/env bash
# Trains the tiny bundled models side by side on one CUDA GPU, each sized by --fit-minutes to end
# by END_SECONDS after this script starts; exports land in OUT:
#   scripts/gpu_train_zoo.sh OUT END_SECONDS CARRY [nuwa] [imagen] [phenaki]
#   nuwa     nuwa:tiny_shapes from scratch: tokenizer, then transformer
#   imagen   the imagen:tiny_shapes base stage, over the text encoder and SR stage in CARRY/imagen
#            (trained on the CPU; the base stage decides what the prompt draws)
#   phenaki  phenaki:tiny_shapes tokenizer, then transformer, over the text encoder in CARRY/phenaki
# TUNE="nuwa phenaki" (or TUNE=1: every model) fine-tunes those models' last stage instead, for
# the whole time, at a lower learning rate, from CARRY/<model>-tiny-shapes when CARRY holds that
# export, else from the bundled model (--init-from; the other stages are read from the export).
# IMAGEN_OVERRIDES="--config.stages.base.KEY=VALUE ..." adds config overrides to the base stage.
# The tiny models leave a GPU mostly idle one at a time, so they share it (each process takes
# at most a quarter of its memory). OUT/<model>.tgz holds the export and each stage's
# metrics.jsonl and config.json; logs in OUT/<model>.log and OUT/all.log.
set -uo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "$1"); end=$2; carry=$(realpath -m "$3"); shift 3
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

tuning() {  # is MODEL to be fine-tuned?
  [ "${TUNE:-0}" = 1 ] || [[ " ${TUNE:-} " == *" $1 "* ]]
}
tune() {  # tune MODEL STAGE BATCH [OVERRIDES...]: fine-tune STAGE from CARRY's or the bundled export
  local model=$1 stage=$2 batch=$3; shift 3
  local source="$carry/$model-tiny-shapes"
  [ -d "$source" ] || source="$model-tiny-shapes"
  train "$model" "$stage" "$batch" "$(minutes_until 40 1.0)" \
      --init-from "$source" --config.optim.lr=3e-4 \
      --config.optim.warmup_steps=50 "$@"
}

run_nuwa() {
  if tuning nuwa; then tune nuwa transformer 64; finish nuwa; return; fi
  train nuwa tokenizer 32 "$(minutes_until 60 0.3)"
  train nuwa transformer 64 "$(minutes_until 40 1.0)"
  finish nuwa
}
run_imagen() {
  if tuning imagen; then
    tune imagen base 64 --config.stages.base.self_attention="(False,True,True)" ${IMAGEN_OVERRIDES:-}
    finish imagen --config.sample.guidance=2.0; return
  fi
  mkdir -p "$work/imagen" && cp -r "$carry/imagen/." "$work/imagen/"
  # Self-attention at 16x16 as well as 8x8: where two objects have to be told apart.
  train imagen base 64 "$(minutes_until 40 1.0)" \
      --config.stages.base.self_attention="(False,True,True)" ${IMAGEN_OVERRIDES:-}
  finish imagen --config.sample.guidance=2.0
}
run_phenaki() {
  if tuning phenaki; then tune phenaki transformer 64; finish phenaki --config.sample.temperature=0.5; return; fi
  mkdir -p "$work/phenaki" && cp -r "$carry/phenaki/." "$work/phenaki/"
  train phenaki tokenizer 32 "$(minutes_until 60 0.45)"
  train phenaki transformer 64 "$(minutes_until 40 1.0)"
  finish phenaki --config.sample.temperature=0.5
}

rm -rf "$work"; mkdir -p "$work"
pids=()
for model in "$@"; do
  "run_$model" & pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv >>"$out/all.log" 2>&1
echo "== done in $SECONDS s" | tee -a "$out/all.log"
