#!/usr/bin/env bash
# Usage: scripts/setup.sh VENV [EXTRAS]
# Creates VENV if needed and installs ddpm into it. Installs the small CPU build of torch
# (torch==2.13.0) unless an NVIDIA GPU is visible, in which case pip's default CUDA build is used.
# pip's output goes to VENV/pip.log and is shown only if an installation fails.
set -euo pipefail
venv="${1:-.venv}"
extras="${2:-}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
log="$venv/pip.log"
pip() {
  if ! "$venv/bin/python" -m pip install --disable-pip-version-check "$@" >>"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "setup: 'pip install $*' failed; full log in $log" >&2
    exit 1
  fi
}
if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "setup: NVIDIA GPU found, installing the CUDA build of torch"
    pip torch
  else
    echo "setup: no GPU, installing the CPU build torch==2.13.0"
    pip torch==2.13.0
  fi
fi
if [ -n "$extras" ]; then
  pip -e ".[$extras]"
else
  pip -e .
fi
echo "setup: ddpm installed in $venv"
