#!/usr/bin/env bash
# Trains the stages of a model in order into one workdir (each resumes where it stopped):
#   scripts/train_stages.sh CONFIG WORKDIR STAGE [STAGE ...] [-- --config.KEY=VALUE ...]
# e.g. scripts/train_stages.sh phenaki:tiny_shapes runs/phenaki-tiny text_encoder tokenizer transformer
set -euo pipefail
cd "$(dirname "$0")/.."  # the repository root
[ -f .venv/bin/activate ] && . .venv/bin/activate
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
config=$1 workdir=$2
shift 2
stages=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do stages+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
for stage in "${stages[@]}"; do
  /usr/bin/time -f "$stage wall %e s" python -m jzoo.train --config "$config" \
      --config.stage="$stage" --workdir "$workdir" --no-progress "$@"
done
echo ALL DONE
