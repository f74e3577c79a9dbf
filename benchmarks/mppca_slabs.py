"""MP-PCA in parallel axial slabs against DIPY's whole-volume run: time and the largest difference.

    python benchmarks/mppca_slabs.py [--shape 64 64 32] [--scheme multishell]

Each slab carries 2 x patch radius of extra slices, so the result equals the whole-volume
one exactly (the table's last column); the speed-up comes from one worker process per
core with one BLAS thread each. Prints a markdown table and the CPU it ran on.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workbench.baselines import mppca  # noqa: E402
from workbench.data.phantoms import simulate_dwi  # noqa: E402
from workbench.training.schedules import cpu_model_name  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs=3, default=[64, 64, 32])
    ap.add_argument("--scheme", default="multishell")
    args = ap.parse_args(argv)
    ph = simulate_dwi(shape=tuple(args.shape), scheme=args.scheme, snr=10.0, seed=0)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"CPU: {cpu_model_name()}, {cores} cores; series {ph.noisy.shape}\n")
    print("| run | time s | max abs difference to whole |\n|---|---|---|")
    t = time.perf_counter()
    whole = mppca(ph.noisy, ph.bvals, n_jobs=1)
    print(f"| DIPY whole volume, 1 process | {time.perf_counter() - t:.1f} | 0 |", flush=True)
    for label, kw in ((f"slabs, {cores} processes (default)", {}),
                      ("6 slabs with progress, 1 process", {"n_jobs": 1, "progress": lambda d, t: None})):
        t = time.perf_counter()
        out = mppca(ph.noisy, ph.bvals, **kw)
        print(f"| {label} | {time.perf_counter() - t:.1f} | {float(np.abs(out - whole).max()):g} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
