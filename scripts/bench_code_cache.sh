#!/usr/bin/env bash
# Phenaki's transformer training speed with and without precomputed codes (python -m jzoo.cache_codes),
# measured back to back on this machine through the real trainer (data pipeline included):
#   scripts/bench_code_cache.sh [STEPS (default 40)] [MODEL (default phenaki:tiny_shapes)]
# Both runs start from the same frozen stages (the bundled export) and a fresh transformer; prints
# each run's median steps/s after compile and their ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-40}; config=${2:-phenaki:tiny_shapes}
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
PY=${PYTHON:-python3}
common=(--config "$config" --config.stage=transformer --frozen-from phenaki-tiny-shapes
        --config.train.steps="$steps" --config.train.log_every=5 --config.train.checkpoint_every=100000
        --no-progress)
"$PY" -m jzoo.cache_codes --config "$config" --workdir "$tmp/cached" --out "$tmp/codes" \
    --limit $((steps * 64)) --config.train.frozen_from=phenaki-tiny-shapes | tail -1
"$PY" -m jzoo.train "${common[@]}" --workdir "$tmp/plain" >/dev/null
"$PY" -m jzoo.train "${common[@]}" --workdir "$tmp/cached" --config.tokenizer.cache="$tmp/codes" >/dev/null
"$PY" - "$tmp" <<'PY'
import json, statistics, sys
def rate(run):  # median steps/s over the logged intervals after the first (compile)
  rows = [json.loads(l) for l in open(f"{sys.argv[1]}/{run}/transformer/metrics.jsonl")]
  return statistics.median(r["steps_per_sec"] for r in rows[1:])
plain, cached = rate("plain"), rate("cached")
print(f"transformer train: pixels {plain:.3f} steps/s, cached codes {cached:.3f} steps/s, "
      f"ratio {cached / plain:.2f}x")
PY
