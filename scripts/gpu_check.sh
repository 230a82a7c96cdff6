#!/usr/bin/env bash
# The checks that need a CUDA GPU, run on one with jzoo installed; results land in OUT:
#   scripts/gpu_check.sh OUT [tests] [benchsmoke] [bench] [smoke] [train END_SECONDS] [peers]
#   tests  the Pallas GPU kernel, compiled, against the dense reference (pytest -m gpu)
#   benchsmoke  every benchmark script's --smoke run (seconds each; on the GPU, the Pallas
#          kernels compiled for real, and the peers where imagen-pytorch & co. are importable)
#   bench  benchmarks/nearby_attention.py: the kernel against cuDNN/XLA dense attention and
#          the blocked XLA path, side by side, at the issue's shape and at a NUWA-like one
#          (OUT/bench_issue.json, OUT/bench_nuwa.json)
#   smoke  200 steps of each nuwa:tiny_shapes stage at GPU batch sizes: their steps/s
#   train  nuwa:tiny_shapes at GPU batch sizes, sized from the smoke's steps/s to end within
#          END_SECONDS of this script's start; exported to OUT/nuwa-tiny-shapes, the
#          stages' metrics and configs in OUT/nuwa-tiny-logs.tgz
#   peers  issue 7's GPU row: the Imagen base U-Net at width 128 (51M parameters), bfloat16,
#          train step and sampling side by side with imagen-pytorch on the same GPU, with MFU
#          (OUT/peers_imagen_b64.json, OUT/peers_imagen_b256.json). The peer's Unet gets
#          num_resnet_blocks=0,1,2 so the parameter counts match (ratio 1.016, forward FLOPs
#          1.06x; the derived 0,1,1 gives 0.855). Needs imagen-pytorch importable, e.g. from
#          the wheels of benchmarks/peers/requirements-gpu.txt on PYTHONPATH.
# Logs go to OUT/all.log. Each part runs even when an earlier one failed; the exit status
# is the number of parts that failed.
set -uo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "$1"); shift
mkdir -p "$out"
export JAX_PLATFORMS=${JAX_PLATFORMS:-cuda} PYTHONUNBUFFERED=1 XLA_FLAGS="${XLA_FLAGS:-}"
PY=${PYTHON:-python3}
log=$out/all.log
failed=0
part() {  # part NAME SECONDS CMD...: runs CMD with a time limit, its output into the log
  local name=$1 limit=$2; shift 2
  echo "== $name ($(date +%T)): $*" | tee -a "$log"
  if ! timeout "$limit" "$@" >>"$log" 2>&1; then
    echo "== $name FAILED" | tee -a "$log"; failed=$((failed + 1))
  fi
}
# GPU batch sizes for the tiny NUWA: the CPU defaults (8 and 16) leave a GPU idle.
BATCH_tokenizer=32 BATCH_transformer=64
train_stage() {  # train_stage WORKDIR STAGE STEPS MINUTES [MORE...]
  local work=$1 stage=$2 steps=$3 minutes=$4; shift 4
  local batch_var=BATCH_$stage
  part "train_$stage" "$(( ${minutes%.*} * 60 + 120 ))" "$PY" -m jzoo.train \
      --config nuwa:tiny_shapes --config.stage="$stage" --workdir "$work" --no-progress \
      --config."$stage".train.batch_size="${!batch_var}" --config.train.steps="$steps" \
      --max-minutes "$minutes" "$@"
}
last_rate() {  # steps/s of the last logged interval of WORKDIR/STAGE
  "$PY" -c "import json,sys; print(json.loads(open(sys.argv[1]).read().splitlines()[-1])['steps_per_sec'])" \
      "$1/$2/metrics.jsonl"
}

while [ $# -gt 0 ]; do
  case $1 in
    tests)
      part tests 150 "$PY" -m pytest -q -m gpu tests/test_nearby_attention.py -p no:cacheprovider
      shift ;;
    benchsmoke)
      for b in nearby_attention nearby_attention_tiles xla_cpu_options input_pipeline \
          peers/imagen_training_sampling peers/nuwa_decoding \
          "peers/phenaki_training_sampling --candidates 2"; do
        name=${b%% *}; extra=${b#"$name"}
        part "smoke_${name#peers/}" 300 "$PY" "benchmarks/$name.py" --smoke --json $extra
      done
      shift ;;
    bench)
      for b in "issue" "nuwa --batch 8 --heads 8 --head-dim 64 --causal --scaling-frames 8 16 32"; do
        name=${b%% *}; extra=${b#"$name"}
        echo "== bench_$name ($(date +%T))" | tee -a "$log"
        timeout 120 "$PY" benchmarks/nearby_attention.py --dtype bfloat16 --impl pallas_gpu \
            --also xla --baseline sdpa --repeats 20 --dense-repeats 5 --json $extra \
            >"$out/bench_$name.json" 2>>"$log" || { echo "== bench_$name FAILED" | tee -a "$log"; failed=$((failed + 1)); }
      done
      shift ;;
    smoke)
      rm -rf /tmp/nuwa-smoke
      for stage in tokenizer transformer; do
        train_stage /tmp/nuwa-smoke $stage "${SMOKE_STEPS:-200}" 2 --config.train.log_every=50
      done
      shift ;;
    train)
      work=/tmp/nuwa-tiny
      # Seconds left before END_SECONDS, less a minute for compiles, export and packing.
      left=$(( $2 - SECONDS - 60 ))
      for stage in tokenizer transformer; do
        share=$([ $stage = tokenizer ] && echo 0.4 || echo 1.0)
        [ $stage = transformer ] && left=$(( $2 - SECONDS - 45 ))
        rate=$(last_rate /tmp/nuwa-smoke $stage 2>/dev/null || echo 1)
        steps=$("$PY" -c "print(max(10, int($rate * $left * $share * 0.85)))")
        minutes=$("$PY" -c "print(max(0.5, round($left * $share / 60, 2)))")
        echo "== $stage: $rate steps/s, $steps steps in at most $minutes min" | tee -a "$log"
        train_stage $work $stage "$steps" "$minutes" --config.train.log_every=100
      done
      part export 60 "$PY" -m jzoo.export --workdir $work --name nuwa-tiny-shapes \
          --out "$out/nuwa-tiny-shapes"
      tar -czf "$out/nuwa-tiny-logs.tgz" -C $work --exclude=checkpoints .
      shift 2 ;;
    peers)
      for batch in 64 256; do
        echo "== peers_imagen batch $batch ($(date +%T))" | tee -a "$log"
        # JAX and torch share the GPU: JAX takes at most 45% of its memory up front.
        XLA_PYTHON_CLIENT_MEM_FRACTION=0.45 timeout 300 "$PY" \
            benchmarks/peers/imagen_training_sampling.py --peer-python "$PY" --device cuda \
            --dtype bfloat16 --override stages.base.channels=128 \
            --override stages.base.train.batch_size=$batch --peer-override num_resnet_blocks=0,1,2 \
            --peak-tflops "${PEAK_TFLOPS:-989}" --patience 0 --rounds 3 --json \
            >"$out/peers_imagen_b$batch.json" 2>>"$log" \
            || { echo "== peers_imagen FAILED" | tee -a "$log"; failed=$((failed + 1)); }
      done
      shift ;;
    *) echo "unknown part $1"; exit 2 ;;
  esac
done
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv >>"$log" 2>&1
echo "== done in $SECONDS s, $failed failed" | tee -a "$log"
exit $failed
