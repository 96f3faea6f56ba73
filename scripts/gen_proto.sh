#!/usr/bin/env bash
# Regenerates the committed gRPC Python code from proto/ into OUT (default: the repo root).
# Run it after editing proto/; tests/test_proto.py fails while the committed code is stale.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-.}
python -m grpc_tools.protoc -Iproto --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
  proto/ctc_asr/v1/asr.proto
