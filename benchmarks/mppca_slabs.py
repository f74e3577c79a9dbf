"""MP-PCA runs against DIPY's whole-volume one: time, largest difference, RMSE to the clean phantom.

    python benchmarks/mppca_slabs.py [--shape 64 64 32] [--scheme multishell]

DIPY in parallel axial slabs (each carries 2 x patch radius of extra slices, so the result
equals the whole-volume one exactly; one worker process per core with one BLAS thread each),
and the batched torch implementation (:mod:`workbench.mppca`, one thread per core each with
its own batched eigendecomposition) on every voxel, with every second voxel as a patch
centre outside the brain only (the blend's default), and everywhere. Differences are the
largest absolute difference over the whole field of view and inside the brain; RMSE is to
the clean phantom inside the brain. Prints a markdown table and the CPU it ran on.
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
from workbench.mppca import dense_region, mppca_batched  # noqa: E402
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
    print("| run | time s | max abs difference to DIPY (all / brain) | RMSE to clean (brain) |\n|---|---|---|---|")
    brain = ph.mask

    def row(label: str, out: np.ndarray, seconds: float) -> None:
        diff = np.abs(out - whole)
        rmse = float(np.sqrt(np.mean((out[brain] - ph.clean[brain]).astype(np.float64) ** 2)))
        print(f"| {label} | {seconds:.1f} | {float(diff.max()):.3g} / {float(diff[brain].max()):.3g} | {rmse:.2f} |",
              flush=True)

    t = time.perf_counter()
    whole = mppca(ph.noisy, ph.bvals, n_jobs=1)
    row("DIPY whole volume, 1 process", whole, time.perf_counter() - t)
    runs = [(f"DIPY in slabs, {cores} processes", lambda: mppca(ph.noisy, ph.bvals)),
            ("DIPY, 6 slabs with progress, 1 process",
             lambda: mppca(ph.noisy, ph.bvals, n_jobs=1, progress=lambda d, t: None)),
            (f"batched torch, every voxel a centre, {cores} threads", lambda: mppca_batched(ph.noisy)),
            ("batched, every voxel in the brain (+2), every 2nd outside (the blend)",
             lambda: mppca_batched(ph.noisy, stride=2, dense=dense_region(brain))),
            ("batched, every 2nd voxel everywhere", lambda: mppca_batched(ph.noisy, stride=2))]
    for label, run in runs:
        t = time.perf_counter()
        out = run()
        row(label, out, time.perf_counter() - t)
    return 0


if __name__ == "__main__":
    sys.exit(main())
