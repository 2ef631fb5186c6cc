#!/usr/bin/env bash
# Regenerates the committed gRPC code under src/keel/profiles/ from proto/ (grpcio-tools and
# mypy-protobuf, pinned in requirements-dev.lock). `tests/unit/test_generated_code.py` fails when
# the committed code is not what this produces.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-src}"
export PATH="$PWD/.venv/bin:$PATH"  # the venv's python and the mypy-protobuf plugins
python -m grpc_tools.protoc -I proto \
  --python_out="$out" --mypy_out="$out" --grpc_python_out="$out" --mypy_grpc_out="$out" \
  proto/keel/profiles/v1/profiles.proto
for package in "$out/keel/profiles" "$out/keel/profiles/v1"; do
  [ -f "$package/__init__.py" ] || echo '"""Generated from proto/ by scripts/generate-proto.sh; do not edit."""' > "$package/__init__.py"
done
