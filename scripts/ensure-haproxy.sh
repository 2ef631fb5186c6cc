#!/usr/bin/env bash
# Installs HAProxy from Debian's `haproxy` package: the load balancer in front of several Keel
# nodes in the fleet tests and benchmark (testkit/haproxy.py, docs/fleet.md). Only the binary is
# used; the package's own service is not started here (the tests start throwaway instances).
set -euo pipefail
if command -v haproxy >/dev/null 2>&1; then
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq --no-install-recommends haproxy >/dev/null 2>&1 \
  || { apt-get update -qq && apt-get install -y -qq --no-install-recommends haproxy; }
# The package starts its service where an init system runs; a test session needs none of it.
if command -v service >/dev/null 2>&1; then service haproxy stop >/dev/null 2>&1 || true; fi
echo "haproxy installed: $(command -v haproxy) ($(haproxy -v | head -1))"
