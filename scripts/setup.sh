#!/usr/bin/env bash
# Creates .venv and installs Keel with the exact versions in requirements*.lock.
# `setup.sh` installs what the service needs; `setup.sh dev` adds the test and lint tools.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install --quiet --upgrade "pip==$(cat requirements-pip.lock)"
if [ "${1:-}" = "dev" ]; then
  python -m pip install --quiet -r requirements-dev.lock
  python -m pip install --quiet --no-deps -e ".[dev]"
else
  python -m pip install --quiet -r requirements.lock
  python -m pip install --quiet --no-deps -e .
fi
