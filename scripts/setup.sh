#!/usr/bin/env bash
# Usage: scripts/setup.sh VENV [EXTRAS]
# Creates VENV if needed and installs ddpm into it. Installs the small CPU build of torch
# (torch==2.13.0) unless an NVIDIA GPU is visible, in which case pip's default CUDA build is used.
set -euo pipefail
venv="${1:-.venv}"
extras="${2:-}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
pip="$venv/bin/python -m pip"
if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    $pip install -q torch
  else
    $pip install -q torch==2.13.0
  fi
fi
if [ -n "$extras" ]; then
  $pip install -q -e ".[$extras]"
else
  $pip install -q -e .
fi
