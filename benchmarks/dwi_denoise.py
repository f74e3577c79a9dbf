"""Denoising quality and speed on simulated phantoms: ours against DIPY's classics, one table.

Every method runs in this one process on the same phantoms (same noise draws),
and is scored by the same function (:func:`workbench.metrics.evaluate_dwi`):
PSNR, SSIM and RMSE over the diffusion-weighted volumes inside the brain mask,
FA RMSE in white matter (reference FA >= 0.25), MD RMSE (1e-3 mm^2/s), wall time.

    python benchmarks/dwi_denoise.py                       # full: 4 settings x 1 seed
    python benchmarks/dwi_denoise.py --seeds 0 1 2         # mean ± spread over noise seeds
    python benchmarks/dwi_denoise.py --quick               # small phantom, few steps: a smoke run
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict

import numpy as np
import torch

from workbench.api import denoise_series
from workbench.baselines import BASELINES, estimate_background_sigma, rician_bias_correct, run_baseline
from workbench.config import Config
from workbench.data.nifti import DWISeries
from workbench.data.phantoms import simulate_dwi
from workbench.data.qspace import qspace_priors
from workbench.metrics import evaluate_dwi

SETTINGS = {
    "multishell-65 SNR10": ("multishell", 10.0),
    "multishell-65 SNR20": ("multishell", 20.0),
    "dti-22 SNR10": ("dti", 10.0),
    "dti-22 SNR20": ("dti", 20.0),
}
KEYS = [("psnr_dwi", "PSNR", 2), ("ssim_dwi", "SSIM", 3), ("rmse_dwi", "RMSE", 1),
        ("fa_rmse_wm", "FA RMSE WM", 3), ("md_rmse", "MD RMSE", 3), ("seconds", "time s", 0)]


def run_method(name: str, phantom, config: Config) -> tuple[np.ndarray, float]:
    """``noisy``; a DIPY baseline, ``+rc`` adds Rician bias correction with the background sigma;
    ``prior-regression``/``prior-sh``: the closed-form leave-one-out predictions alone (no network);
    a model name, ``:nopost`` switching off shrinkage and Rician correction."""
    t0 = time.perf_counter()
    base, _, variant = name.partition(":")
    if name == "noisy":
        return phantom.noisy, 0.0
    if base.startswith("prior-"):
        priors = qspace_priors(phantom.noisy, phantom.bvals, phantom.bvecs, phantom.mask, base[len("prior-"):])
        return priors[0], time.perf_counter() - t0
    if base.removesuffix("+rc") in BASELINES:
        out = run_baseline(base.removesuffix("+rc"), phantom.noisy, phantom.bvals, mask=phantom.mask)
        if base.endswith("+rc"):
            out = rician_bias_correct(out, estimate_background_sigma(phantom.noisy, phantom.mask))
    else:
        cfg = config.model_copy(deep=True)
        cfg.model.name = base
        if variant == "nopost":
            cfg.inference.shrinkage = cfg.inference.rician_correction = False
        elif variant:
            raise SystemExit(f"unknown variant '{variant}' (known: nopost)")
        series = DWISeries(phantom.noisy, phantom.affine, None, phantom.bvals, phantom.bvecs)
        out, _ = denoise_series(series, config=cfg, mask=phantom.mask)
    return out, time.perf_counter() - t0


def fmt(values: list[float], digits: int) -> str:
    mean = float(np.mean(values))
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {float(np.std(values)):.{digits}f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--methods", nargs="+", default=["noisy", "mppca", "patch2self", "nlmeans", "multiscale"])
    parser.add_argument("--steps", type=int, default=None, help="override train.steps for our models")
    parser.add_argument("--quick", action="store_true", help="32x32x16 phantom and 60 steps")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = Config()
    shape = (64, 64, 32)
    if args.quick:
        shape = (32, 32, 16)
        config.train.steps = 60
        config.train.val_every = 30
    if args.steps:
        config.train.steps = args.steps
    print(f"# DWI denoising benchmark: phantom {shape}, seeds {args.seeds}, our steps {config.train.steps}, "
          f"{args.threads} threads, torch {torch.__version__}\n", flush=True)
    results: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for setting in args.settings:
        scheme, snr = SETTINGS[setting]
        for seed in args.seeds:
            phantom = simulate_dwi(shape=shape, scheme=scheme, snr=snr, seed=seed)
            for method in args.methods:
                out, seconds = run_method(method, phantom, config)
                m = evaluate_dwi(out, phantom.clean, phantom.bvals, phantom.bvecs, phantom.mask)
                m["seconds"] = seconds
                for key, *_ in KEYS:
                    results[setting][method][key].append(m[key])
                print(f"  {setting} seed {seed} {method}: PSNR {m['psnr_dwi']:.2f} FA-WM {m['fa_rmse_wm']:.3f} "
                      f"({seconds:.0f} s)", file=sys.stderr, flush=True)
    head = ["setting", "method"] + [k[1] for k in KEYS]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for setting, methods in results.items():
        for method, metrics in methods.items():
            cells = [setting, method] + [fmt(metrics[k], d) for k, _, d in KEYS]
            print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
