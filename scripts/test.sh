#!/usr/bin/env bash
# Installs what the tests need, then runs the whole suite: unit tests, then integration tests (root).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --test
.venv/bin/ruff check pycri tests tools bench
.venv/bin/mypy
exec .venv/bin/python -m pytest -p no:cacheprovider "$@"
