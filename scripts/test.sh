#!/usr/bin/env bash
# Install everything the tests need (see install.sh --test), then run the whole suite.
# Extra arguments go to pytest, e.g. scripts/test.sh -k watchlist
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --test
.venv/bin/python -m ruff check worker tests
.venv/bin/python -m ruff format --check worker tests
exec .venv/bin/python -m pytest "$@"
