#!/usr/bin/env bash
# Set up and run the demos: simulate a DWI phantom and denoise it (ours and MP-PCA, figure and table), then
# super-resolve a held-out soil micro-CT volume x4 with the shipped network (against tricubic).
# Usage: bash scripts/demo.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
out=${1:-demo_output/$(date +%Y%m%d-%H%M%S)}
workbench demo --out "$out"
workbench sr demo --out "$out/sr"
echo "DWI figure: $out/comparison.png   table: $out/results.md   SR volumes and metrics: $out/sr/"
