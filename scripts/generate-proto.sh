#!/usr/bin/env bash
# Regenerates the committed gRPC code under src/keel/api/grpc/wire/v1/ from contracts/proto/ (grpcio-tools
# and mypy-protobuf, pinned in requirements-dev.lock). `tests/unit/test_generated_code.py` fails
# when the committed code is not what this produces.
#
# protoc places Python modules by the .proto's path (keel/profiles/v1/), which is also the name
# the descriptor is registered under and the protobuf package callers see on the wire; both stay.
# Only the Python modules move, into the gRPC wire package: generated into a scratch folder,
# then copied with their own module names rewritten.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-src}"
export PATH="$PWD/.venv/bin:$PATH"  # the venv's python and the mypy-protobuf plugins
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
python -m grpc_tools.protoc -I contracts/proto \
  --python_out="$scratch" --mypy_out="$scratch" --grpc_python_out="$scratch" --mypy_grpc_out="$scratch" \
  contracts/proto/keel/profiles/v1/profiles.proto
package="$out/keel/api/grpc/wire/v1"
mkdir -p "$package"
for generated in "$scratch"/keel/profiles/v1/*; do
  sed -e 's/from keel\.profiles\.v1 import/from keel.api.grpc.wire.v1 import/' \
      -e 's/keel\.profiles\.v1\.profiles_pb2/keel.api.grpc.wire.v1.profiles_pb2/g' \
      "$generated" > "$package/$(basename "$generated")"
done
[ -f "$package/__init__.py" ] || echo '"""Generated from contracts/proto/ by scripts/generate-proto.sh; do not edit."""' > "$package/__init__.py"
