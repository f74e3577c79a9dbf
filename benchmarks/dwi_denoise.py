"""Denoising quality and speed on simulated phantoms: ours against DIPY's classics, one table.

Every method runs in this one process on the same phantoms (same noise draws),
and is scored by the same function (:func:`workbench.metrics.evaluate_dwi`):
PSNR, SSIM and RMSE over the diffusion-weighted volumes inside the brain mask,
FA RMSE in white matter (reference FA >= 0.25), MD RMSE (1e-3 mm^2/s), wall time.
Each seed changes the noise, the phantom's geometry and its gradient table.

Our model is trained once per phantom with the default configuration; the
ablation rows come from that same run by switching parts off:

- ``ours``: the default (``workbench denoise``): J-invariant network, SURE-weighted blend with
  full-data MP-PCA and the noisy volume, Rician mean inversion, free-water floor;
- ``ours -noisy term``: the blend of network and MP-PCA only;
- ``ours -blend``: shrinkage toward the noisy volume instead of the MP-PCA blend (the previous default);
- ``ours -blend -shrink``: neither;
- ``ours -blend -shrink -rician``: no Rician mean inversion either (the free-water floor stays);
- ``ours J-invariant only``: the raw network output, no post-processing at all;
- ``prior + blend``: the network's first input (split MP-PCA prior) in place of the network, then the
  default post-processing (what the trained network adds on top of its input);
- ``prior + shrink``: that prior with the previous default post-processing;
- ``ours [loss ...]`` (``--losses``): the default pipeline trained with other loss weights (the loss ablation);
- ``mppca`` / ``patch2self``: DIPY as published; ``+rc``: with ``sqrt(S^2 - 2 sigma^2)`` Rician
  correction; ``+post``: with our post-processing (Rician inversion + free-water floor).

    python benchmarks/dwi_denoise.py --seeds 0 1 2          # the README's table (about 100 min on 2 cores)
    python benchmarks/dwi_denoise.py --quick                 # small phantom, few steps: a smoke run
    python benchmarks/dwi_denoise.py --settings "dti-22 SNR10" --baselines --losses mse:1 mse:1,edge:0.2

``edge ratio`` is :func:`workbench.metrics.edge_sharpness` of the result over that of the clean phantom
(mean 3D Sobel magnitude of the diffusion-weighted volumes in the mask): below 1 = blurrier than the truth,
above 1 = residual noise or overshoot.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict

import numpy as np
import torch

from workbench.api import make_trainer
from workbench.baselines import estimate_background_sigma, run_baseline
from workbench.demo import rician_variants
from workbench.config import Config
from workbench.data.nifti import DWISeries
from workbench.data.phantoms import simulate_dwi
from workbench.inference import (Denoiser, blend_with_mppca, mppca_with_divergence, post_process,
                                  rician_noise_stats)
from workbench.metrics import evaluate_dwi

SETTINGS = {
    "multishell-65 SNR10": ("multishell", 10.0),
    "multishell-65 SNR20": ("multishell", 20.0),
    "dti-22 SNR10": ("dti", 10.0),
    "dti-22 SNR20": ("dti", 20.0),
}
KEYS = [("psnr_dwi", "PSNR", 2), ("ssim_dwi", "SSIM", 4), ("fa_rmse_wm", "FA RMSE WM", 4),
        ("md_rmse", "MD RMSE", 3), ("rmse_dwi", "RMSE", 1), ("edge_sharpness_ratio", "edge ratio", 3),
        ("seconds", "time s", 0)]
BASELINE_CHOICES = ["mppca", "patch2self", "nlmeans"]


#: (setting, seed, b, estimated RMSE, true RMSE, flagged) of the default's no-reference estimate, per shell
ESTIMATES: list[tuple] = []


def record_estimate(label: tuple, out, phantom) -> None:
    """The default's no-reference per-shell estimate beside the true per-shell RMSE of the same output."""
    from workbench.error_estimate import per_shell

    n = phantom.noisy.shape[-1]
    true = np.array([np.mean((out.denoised[..., j] - phantom.clean[..., j])[phantom.mask].astype(np.float64) ** 2)
                     for j in range(n)])
    for est, tru in zip(out.est_per_shell or [], per_shell(true, phantom.bvals)):
        ESTIMATES.append(label + (est["b"], est["rmse"], tru["rmse"], est["flagged"]))


def ours(phantom, config: Config, sigma: float, label: tuple = ()) -> dict[str, tuple[np.ndarray, float]]:
    """Train once, then the default output and its ablations (all in input units)."""
    t0 = time.perf_counter()
    series = DWISeries(phantom.noisy, phantom.affine, None, phantom.bvals, phantom.bvecs)
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        trainer = make_trainer([series], tmp, config, masks=[phantom.mask])
        t_prep = time.perf_counter() - t0
        result = trainer.fit()
        denoiser = Denoiser.from_checkpoint(result.best_checkpoint or result.last_checkpoint)
    subject = trainer.subjects[0]
    out = denoiser.denoise(phantom.noisy, phantom.bvals, phantom.bvecs, phantom.mask, sigma=sigma,
                           subject=subject, keep_raw=True)
    seconds = time.perf_counter() - t0
    if label:
        record_estimate(label, out, phantom)
    sc, y, brain = subject.scale, subject.volumes.numpy(), subject.mask.numpy()

    # the same MP-PCA run and divergence probe as the default's blend (seed 0), computed once for the ablations
    icfg = denoiser.config.inference
    mppca_run = mppca_with_divergence(y, sigma / sc, brain, stride=icfg.mppca_stride,
                                      divergence_voxels=icfg.divergence_voxels, lattice=icfg.mppca_lattice)

    def post(preds: np.ndarray, shrink: bool, rician: bool, floor: bool, blend: bool = False) -> np.ndarray:
        heldout = ((preds - y)[:, brain].astype(np.float64) ** 2).mean(axis=1)
        noise_var, _ = rician_noise_stats(preds, brain, sigma / sc)
        if blend:  # the default's blend; with shrink, the noisy volume is its third term
            preds, _, _ = blend_with_mppca(preds, y, noise_var, brain, sigma / sc, phantom.bvals,
                                           include_noisy=shrink, mppca=mppca_run)
            shrink = False
        res, _ = post_process(preds, y, heldout, noise_var, sigma / sc, phantom.bvals, shrinkage=shrink,
                              rician_correction=rician, free_water_floor=floor)
        return np.moveaxis(np.clip(res, 0, None), 0, -1) * np.float32(sc)

    raw = np.moveaxis(out.raw, -1, 0) / np.float32(sc)
    prior = subject.priors[0].numpy()
    return {
        "ours": (out.denoised, seconds),
        "ours -noisy term": (post(raw, False, True, True, blend=True), seconds),
        "ours -blend": (post(raw, True, True, True), seconds),
        "ours -blend -shrink": (post(raw, False, True, True), seconds),
        "ours -blend -shrink -rician": (post(raw, False, False, True), seconds),
        "ours J-invariant only": (out.raw, seconds),
        "prior + blend": (post(prior, True, True, True, blend=True), t_prep),
        "prior + shrink": (post(prior, True, True, True), t_prep),
    }


def baselines(name: str, phantom, sigma: float) -> dict[str, tuple[np.ndarray, float]]:
    """A DIPY method as published, with the usual Rician correction, and with our post-processing."""
    t0 = time.perf_counter()
    out = run_baseline(name, phantom.noisy, phantom.bvals, mask=phantom.mask)
    seconds = time.perf_counter() - t0
    corrected, post = rician_variants(out, sigma, phantom.bvals)
    return {name: (out, seconds), f"{name}+rc": (corrected, seconds), f"{name}+post": (post, seconds)}


def parse_loss(text: str) -> dict[str, float]:
    """``mse:1,edge:0.2`` -> {"mse": 1.0, "edge": 0.2} (names from workbench.losses.LOSSES)."""
    from workbench.losses import LOSSES

    weights = {}
    for part in text.split(","):
        name, _, value = part.partition(":")
        if name not in LOSSES or not value:
            raise argparse.ArgumentTypeError(f"{part!r}: give NAME:WEIGHT with NAME one of {', '.join(sorted(LOSSES))}")
        weights[name] = float(value)
    return weights


def fmt(values: list[float], digits: int) -> str:
    mean = float(np.mean(values))
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {float(np.std(values)):.{digits}f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--baselines", nargs="*", default=["mppca", "patch2self"], choices=BASELINE_CHOICES)
    parser.add_argument("--steps", type=int, default=None, help="override train.steps for our model")
    parser.add_argument("--lr", type=float, default=None, help="override train.lr (onecycle's peak) for our model")
    parser.add_argument("--quick", action="store_true", help="32x32x16 phantom and 40 steps")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--losses", nargs="*", default=[], type=parse_loss,
                        help="extra trainings of ours with these loss weights, e.g. mse:1,edge:0.2 (the loss ablation)")
    parser.add_argument("--mppca-stride", type=int, default=None,
                        help="patch-centre spacing of our pipeline's MP-PCA (prior and blend; default: the config's)")
    parser.add_argument("--prior-lattice", type=int, default=None, choices=(1, 2, 4),
                        help="patch centres of the split prior's MP-PCA in the brain: 1 every voxel, 2 checkerboard, "
                        "4 body-centred cubic (data.mppca_lattice; default: the config's)")
    parser.add_argument("--blend-lattice", type=int, default=None, choices=(1, 2, 4),
                        help="the same for the blend's MP-PCA (inference.mppca_lattice; default: the config's)")
    parser.add_argument("--prior-ridge", type=float, default=None,
                        help="ridge of the split prior's regression (data.prior_ridge; default: the config's)")
    parser.add_argument("--prior-folds", type=int, default=None,
                        help="folds of the split MP-PCA prior (data.prior_folds; default: the config's)")
    parser.add_argument("--volume-input", default=None, choices=("noisy", "denoised"),
                        help="what the network reads of the other volumes (data.volume_input; default: the config's)")
    parser.add_argument("--compile", action="store_true", help="train the network torch.compile'd (train.compile)")
    parser.add_argument("--jsonl", type=str, default=None,
                        help="append every (setting, seed, method) result to this JSON-lines file as it comes")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = Config()
    shape = (64, 64, 32)
    if args.quick:
        shape = (32, 32, 16)
        config.train.steps, config.train.val_every = 40, 20
    if args.steps:
        config.train.steps = args.steps
    if args.lr:
        config.train.lr = args.lr
    if args.mppca_stride:
        config.data.mppca_stride = config.inference.mppca_stride = args.mppca_stride
    if args.prior_lattice:
        config.data.mppca_lattice = args.prior_lattice
    if args.blend_lattice:
        config.inference.mppca_lattice = args.blend_lattice
    if args.prior_folds:
        config.data.prior_folds = args.prior_folds
    if args.prior_ridge is not None:
        config.data.prior_ridge = args.prior_ridge
    if args.volume_input:
        config.data.volume_input = args.volume_input
    config.train.compile = config.train.compile or args.compile
    print(f"# DWI denoising benchmark: phantom {shape}, seeds {args.seeds}, our steps {config.train.steps}, "
          f"lr {config.train.lr:g}, "
          f"{args.threads} threads, MP-PCA stride {config.data.mppca_stride}/{config.inference.mppca_stride}, "
          f"lattice {config.data.mppca_lattice}/{config.inference.mppca_lattice}, "
          f"{config.data.prior_folds} prior folds (ridge {config.data.prior_ridge:g}), {'denoised' if config.data.denoised_volume_input else 'noisy'} volume inputs, "
          f"{'compiled' if config.train.compile else 'eager'} training, "
          f"torch {torch.__version__}\n", flush=True)
    results: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for seed in args.seeds:  # seeds outermost: a cut-short run still covers every setting
        for setting in args.settings:
            scheme, snr = SETTINGS[setting]
            phantom = simulate_dwi(shape=shape, scheme=scheme, snr=snr, seed=seed)
            sigma = estimate_background_sigma(phantom.noisy, phantom.mask)
            outputs = {"noisy": (phantom.noisy, 0.0)}
            for name in args.baselines:
                outputs.update(baselines(name, phantom, sigma))
            outputs.update(ours(phantom, config, sigma, label=(setting, seed)))
            for weights in args.losses:
                cfg = config.model_copy(deep=True)
                cfg.loss.weights = weights
                label = " + ".join(f"{w:g} {k}" for k, w in weights.items())
                outputs[f"ours [loss {label}]"] = ours(phantom, cfg, sigma)["ours"]
            for method, (out, seconds) in outputs.items():
                m = evaluate_dwi(out, phantom.clean, phantom.bvals, phantom.bvecs, phantom.mask)
                m["seconds"] = seconds
                for key, *_ in KEYS:
                    results[setting][method][key].append(m[key])
                if args.jsonl:
                    with open(args.jsonl, "a") as fh:
                        fh.write(json.dumps({"setting": setting, "seed": seed, "method": method,
                                             **{k: float(m[k]) for k, *_ in KEYS}}) + "\n")
                print(f"  {setting} seed {seed} {method}: PSNR {m['psnr_dwi']:.2f} SSIM {m['ssim_dwi']:.4f} "
                      f"FA-WM {m['fa_rmse_wm']:.4f} MD {m['md_rmse']:.3f} ({seconds:.0f} s)",
                      file=sys.stderr, flush=True)
    head = ["setting", "method"] + [k[1] for k in KEYS]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for setting, methods in results.items():
        for method, metrics in methods.items():
            cells = [setting, method] + [fmt(metrics[k], d) for k, _, d in KEYS]
            print("| " + " | ".join(cells) + " |")
    print("\nmean ± standard deviation over seeds; MD RMSE in 1e-3 mm^2/s; time includes training for ours")
    if ESTIMATES:
        print("\nNo-reference estimate of ours (what `workbench denoise` reports) against the true RMSE, per shell:\n")
        print("| setting | seed | shell b | estimated RMSE | true RMSE | estimate / true | flagged 'may be low' |")
        print("|---|---|---|---|---|---|---|")
        for setting, seed, b, est, tru, flagged in ESTIMATES:
            print(f"| {setting} | {seed} | {b:.0f} | {est:.2f} | {tru:.2f} | {est / tru:.2f} | "
                  f"{'yes' if flagged else 'no'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
