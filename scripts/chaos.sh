#!/usr/bin/env bash
# The failure experiments (chaos/experiments/*.json) against a real Keel, PostgreSQL, Redis and NATS,
# all started here on loopback and removed after: ./scripts/chaos.sh [experiment names...]
# About 9 minutes for all twelve; exits 1 if any check fails. KEEL_CHAOS_KEEP=1 keeps Keel's log.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh dev
. .venv/bin/activate
export GRPC_ENABLE_FORK_SUPPORT=false  # every fork is followed by exec (tests/conftest.py says why)
exec python -m chaos "$@"
