#!/usr/bin/env bash
# Puts promtool (from Debian's `prometheus` package) in .tools/bin without installing the
# package: only the binary is extracted, so no Prometheus server is set up or started.
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v promtool >/dev/null 2>&1 || [ -x .tools/bin/promtool ]; then
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
( cd "$work" && { apt-get download prometheus >/dev/null 2>&1 || { apt-get update -qq && apt-get download prometheus; }; } )
dpkg-deb -x "$work"/prometheus_*.deb "$work/root"
mkdir -p .tools/bin
cp "$work/root/usr/bin/promtool" .tools/bin/promtool
echo "promtool installed in .tools/bin"
