#!/usr/bin/env bash
# Puts openapi-typescript and TypeScript (the npm registry's, at the versions and integrity
# hashes of tests/contract/typescript/package-lock.json) in .tools/openapi-typescript: the
# TypeScript type build of each API version (tests/contract/test_generated_client.py). Needs
# Node.js 18.17 or later with npm (the same npm as scripts/ensure-buf.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
TOOL=.tools/openapi-typescript
SOURCE=tests/contract/typescript
if [ -x "$TOOL/node_modules/.bin/tsc" ] && [ -x "$TOOL/node_modules/.bin/openapi-typescript" ] \
  && cmp -s "$SOURCE/package-lock.json" "$TOOL/installed.lock"; then
  exit 0
fi
rm -rf "$TOOL"
mkdir -p "$TOOL"
cp "$SOURCE/package.json" "$SOURCE/package-lock.json" "$TOOL/"
npm ci --silent --no-audit --no-fund --prefix "$TOOL"
cp "$SOURCE/package-lock.json" "$TOOL/installed.lock"  # only once the install has succeeded
echo "openapi-typescript $("$TOOL/node_modules/.bin/openapi-typescript" --version 2>/dev/null | tail -1), tsc $("$TOOL/node_modules/.bin/tsc" --version) installed in $TOOL"
