#!/usr/bin/env bash
# Trains the bundled phenaki-tiny-shapes, stage by stage (resumes where it stopped).
exec "$(dirname "$0")/train_stages.sh" phenaki:tiny_shapes "${WORKDIR:-runs/phenaki-tiny}" \
    text_encoder tokenizer transformer
