#!/usr/bin/env bash
# Set up and run the demo: simulate a phantom, denoise it (ours and MP-PCA), write a figure and a table.
# Usage: bash scripts/demo.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
out=${1:-demo_output/$(date +%Y%m%d-%H%M%S)}
workbench demo --out "$out"
echo "figure: $out/comparison.png   table: $out/results.md"
