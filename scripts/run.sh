#!/usr/bin/env bash
# Installs Keel and runs it on the embedded default (SQLite file, in-process everything),
# after creating the schema and a fresh API key, and prints a ready-to-paste curl.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
. .venv/bin/activate
export KEEL_DATABASE_URL="${KEEL_DATABASE_URL:-sqlite:///./keel.sqlite3}"
keel migrate
token=$(keel keys create --scopes profiles:read,profiles:write --name quickstart --quiet)
port="${KEEL_PORT:-8000}"
cat <<TXT

Keel is starting on http://127.0.0.1:${port}  (API docs: http://127.0.0.1:${port}/docs)
Your new API key (shown once): ${token}

Try:
  curl -s -X POST http://127.0.0.1:${port}/v1/profiles \\
    -H "Authorization: Bearer ${token}" -H "Content-Type: application/json" \\
    -d '{"handle": "ada_l", "emails": [{"address": "ada@example.com", "primary": true}]}'
  curl -s http://127.0.0.1:${port}/v1/profiles -H "Authorization: Bearer ${token}"
  curl -s http://127.0.0.1:${port}/graphql -H "Authorization: Bearer ${token}" \
    -H "Content-Type: application/json" -d '{"query": "{ profiles(first: 5) { edges { node { id handle } } } }"}'

(gRPC too: KEEL_GRPC_PORT=50051 ./scripts/run.sh; see the README.)

TXT
exec keel serve --port "$port"
