#!/usr/bin/env bash
# Trains the bundled imagen-tiny-shapes, stage by stage (resumes where it stopped).
set -euo pipefail
cd "$(dirname "$0")/.."  # the repository root
[ -f .venv/bin/activate ] && . .venv/bin/activate
export JAX_PLATFORMS=cpu
for stage in text_encoder base sr; do
  /usr/bin/time -f "$stage wall %e s" python -m jzoo.train --config imagen:tiny_shapes \
      --config.stage=$stage --workdir "${WORKDIR:-runs/imagen-tiny}" --no-progress
done
echo ALL DONE
