#!/usr/bin/env bash
# End-to-end capacity on a GPU machine, for one prepared device run: each model directory served
# with the native beam search on each ONNX Runtime provider (CUDA, then the CPU), decoder
# threads = cores, real-time streams from a load generator on the same machine; prints the
# benchmark's table and the most streams held at p95 partial <= 200 ms per provider.
#   scripts/gpu_capacity.sh [PYTHON]      (PYTHON: one with onnxruntime-gpu and the serving deps)
# Environment: STREAMS (default 64,128,256,512,1000), SECONDS_PER_STREAM (20), PROVIDERS
# ("cuda cpu"), MODELS (comma-separated model directories, side by side in one run; default the
# bundled model, e.g. "models/pretrained/default,cached-model" for the windowed and the natively
# streaming encoder: its batched cached-state steps). The native beam search is compiled first
# if it is not yet (g++, zlib).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}
STREAMS=${STREAMS:-64,128,256,512,1000}
"$PY" -m engine.decoder.native.build
for provider in ${PROVIDERS:-cuda cpu}; do
    echo "## provider $provider"
    "$PY" -m service.tools.benchmark --streams "$STREAMS" --seconds "${SECONDS_PER_STREAM:-20}" --held-ms 200 \
        --unary-requests 100 --decoder native --models "${MODELS:-models/pretrained/default}" \
        -- --provider "$provider" --workers "$(nproc)" --max-batch 256
done
