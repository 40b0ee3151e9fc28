#!/usr/bin/env bash
# Set up a virtual environment (CPU torch unless a GPU is present) and run the default test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh .venv test
.venv/bin/python -m pytest -q "$@"
