#!/usr/bin/env bash
# Run on a machine WITH PyPI access, before scripts/gpu_check.sh on a GPU machine without it:
# downloads the pure-Python diffusers wheel (the only package bench.py needs that the GPU image
# lacks; its dependencies are already there) into .whl/, which git ignores via .git/info/exclude.
# Then carry .whl to the GPU machine; gpu_check.sh installs it into /tmp/ddpm-site.
set -euo pipefail
cd "$(dirname "$0")/.."
version="${DIFFUSERS_VERSION:-0.42.1}"
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
python3 -m pip download -q --no-deps --only-binary=:all: -d .whl "diffusers==${version}"
ls -l .whl
