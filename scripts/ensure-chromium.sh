#!/usr/bin/env bash
# Installs Chromium from Debian's `chromium` package, for tests/e2e/test_browser_pages.py, which
# drives it with playwright (never with `playwright install`: its own browser builds are
# downloaded from outside the package registries, and need not be there).
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq chromium >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq chromium; }
echo "chromium installed: $(command -v chromium)"
