#!/usr/bin/env bash
# The failure experiments (chaos/experiments/*.json) against a real Keel, PostgreSQL and Redis,
# all started here on loopback and removed after: ./scripts/chaos.sh [experiment names...]
# About 6 minutes for all seven; exits 1 if any check fails. KEEL_CHAOS_KEEP=1 keeps Keel's log.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh dev
. .venv/bin/activate
exec python -m chaos "$@"
