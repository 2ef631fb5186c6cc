#!/usr/bin/env bash
# Puts openapi-python-client (the SDK generator, at the pins of requirements-openapi-client.lock,
# hash-checked) in a tool environment of its own, .tools/openapi-client: it needs typer < 0.28,
# which Keel's own environment does not hold. Used by tests/contract/test_generated_client.py.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOL=.tools/openapi-client
LOCK=requirements-openapi-client.lock
if [ -x "$TOOL/bin/openapi-python-client" ] && cmp -s "$LOCK" "$TOOL/installed.lock"; then
  exit 0
fi
rm -rf "$TOOL"
python3 -m venv "$TOOL"
"$TOOL/bin/python" -m pip install --quiet --upgrade "pip==$(cat requirements-pip.lock)"
"$TOOL/bin/python" -m pip install --quiet --require-hashes --no-deps -r "$LOCK"
cp "$LOCK" "$TOOL/installed.lock"
echo "openapi-python-client $("$TOOL/bin/openapi-python-client" --version) installed in $TOOL"
