#!/usr/bin/env bash
# Installs wrk from Debian's `wrk` package: the load generator of bench/, and the real client in
# tests/integration/test_bench_answer_check.py (the negative control of the benchmarks' answer check).
set -euo pipefail
if command -v wrk >/dev/null 2>&1; then
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq wrk >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq wrk; }
echo "wrk installed: $(command -v wrk)"
