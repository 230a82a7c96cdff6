#!/usr/bin/env bash
# Trains the bundled imagen-tiny-shapes, stage by stage (resumes where it stopped).
exec "$(dirname "$0")/train_stages.sh" imagen:tiny_shapes "${WORKDIR:-runs/imagen-tiny}" \
    text_encoder base sr
