"""The split MP-PCA prior's regression ridge: the prior's PSNR, FA error and FA bias for several ridges.

    python benchmarks/dwi_prior_ridge.py [--seeds 0] [--ridges 1e-3 1e-4 1e-5 0]

The split prior (:func:`workbench.data.qspace.split_mppca_prior`) maps each fold's MP-PCA-denoised
other volumes onto the fold's volumes by one ridge regression over the brain. Ridge shrinks the
regression's weights, so the prediction of a volume loses part of what sets it apart from the
shell's other directions: the prior's angular contrast falls and the tensor fit reads a lower FA.
Each row is the prior alone (no network) put through our post-processing (Rician mean inversion,
free-water floor; :func:`workbench.demo.rician_variants`), scored like the denoising benchmark:
PSNR over the diffusion-weighted volumes in the mask, FA RMSE and mean signed FA error ("bias")
where the clean phantom's FA >= 0.25. 64x64x32 phantoms, the same as ``dwi_denoise.py``'s.
Deterministic (no training); prints the CPU it ran on.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workbench.baselines import estimate_background_sigma  # noqa: E402
from workbench.data.phantoms import simulate_dwi  # noqa: E402
from workbench.data.qspace import split_mppca_prior  # noqa: E402
from workbench.demo import rician_variants  # noqa: E402
from workbench.metrics import dti_metrics, psnr  # noqa: E402
from workbench.training.schedules import cpu_model_name  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dwi_denoise import SETTINGS  # noqa: E402  (the denoising benchmark's phantoms)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--ridges", nargs="+", type=float, default=[1e-3, 1e-4, 1e-5, 0.0])
    ap.add_argument("--folds", type=int, default=3, help="data.prior_folds")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"CPU: {cpu_model_name()}, {cores} cores, {args.threads} threads; {args.folds} prior folds\n")
    print("| setting | seed | ridge | PSNR | FA RMSE WM | FA bias WM | time s |\n|---|---|---|---|---|---|---|")
    for setting in args.settings:
        scheme, snr = SETTINGS[setting]
        for seed in args.seeds:
            ph = simulate_dwi(shape=(64, 64, 32), scheme=scheme, snr=snr, seed=seed)
            sigma = estimate_background_sigma(ph.noisy, ph.mask)
            ref = dti_metrics(ph.clean, ph.bvals, ph.bvecs, ph.mask).fa
            wm = ph.mask & (ref >= 0.25)
            dw = np.asarray(ph.bvals) > 50
            for ridge in args.ridges:
                t0 = time.perf_counter()
                prior = split_mppca_prior(ph.noisy.astype(np.float32), ph.bvals, ph.mask, n_folds=args.folds,
                                          ridge=ridge)
                seconds = time.perf_counter() - t0
                post = rician_variants(prior, sigma, ph.bvals)[1]
                err = dti_metrics(post, ph.bvals, ph.bvecs, ph.mask).fa[wm] - ref[wm]
                print(f"| {setting} | {seed} | {ridge:g} | {psnr(post[..., dw], ph.clean[..., dw], ph.mask):.2f} | "
                      f"{np.sqrt(np.mean(err ** 2)):.4f} | {np.mean(err):+.4f} | {seconds:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
