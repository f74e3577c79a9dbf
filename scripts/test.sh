#!/usr/bin/env bash
# Set up and run the whole test suite (core, CLI, DDP).
# Usage: bash scripts/test.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
python3 -m pytest tests/ -q -p no:cacheprovider "$@"
