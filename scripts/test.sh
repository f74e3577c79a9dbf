#!/usr/bin/env bash
# Set up and run the whole test suite: the core, the CLI, DDP, the napari plugin on a real viewer
# (under Xvfb) and every notebook executed by nbval (small sizes: CI=true).
# Usage: bash scripts/test.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} QT_API=pyqt6 CI=${CI:-true}
run=(python3 -m pytest tests notebooks --nbval-lax -q -p no:cacheprovider "$@")
if [ -z "${DISPLAY:-}" ] && command -v xvfb-run >/dev/null 2>&1; then
  xvfb-run -a -s "-screen 0 1920x1200x24" "${run[@]}"
else
  "${run[@]}"
fi
