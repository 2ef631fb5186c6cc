#!/usr/bin/env bash
# Puts buf (the npm registry's @bufbuild/buf, at the version below) in .tools/bin: the `.proto`'s
# breaking-change check (tests/unit/test_proto_breaking.py) and its build.
set -euo pipefail
cd "$(dirname "$0")/.."
BUF_VERSION=1.75.0
if [ -x .tools/bin/buf ] && [ "$(.tools/bin/buf --version 2>/dev/null)" = "$BUF_VERSION" ]; then
  exit 0
fi
mkdir -p .tools/npm .tools/bin
npm install --silent --no-audit --no-fund --prefix .tools/npm "@bufbuild/buf@$BUF_VERSION"
ln -sf ../npm/node_modules/.bin/buf .tools/bin/buf
echo "buf $(.tools/bin/buf --version) installed in .tools/bin"
