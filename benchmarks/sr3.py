"""SR3 diffusion benchmark: soil slices at 8x in-plane, against bicubic and the sr task's regression network.

    python benchmarks/sr3.py                    # 3 held-out volumes, 8 slices each, K=4, 20 steps
    python benchmarks/sr3.py --grain-radius 10  # coarser held-out soils (median grain radius 10 voxels)
    python benchmarks/sr3.py --quick            # 1 volume, 2 slices, K=2, 5 steps (CI smoke run)

Held-out data: soil volumes simulated with seeds 10000 + k (the shipped SR3 checkpoint and the
regression network trained on 24 volumes drawn from seed 0, grain radii 2-16 voxels), 128^3,
median grain radius drawn in 2-6 voxels (the simulator's default) or ``--grain-radius``,
degraded in-plane with their own drawn PSF and noise (``workflow.sample_case(..., inplane=True)``);
the central ``--depth`` slices are scored. The regression network is the sr task's shipped
``rrdb_sr`` at x8 in-plane, trained on the same volumes as the SR3 checkpoint
(``scripts/train_sr_weights.py --scale 8 --inplane`` and ``scripts/train_sr3_weights.py``). Metrics (``evaluate_slices``): PSNR over the stack, mean 2D SSIM, and
after one fixed 3-phase segmentation (thresholds of the HR reference) the porosity error,
the 2D two-point-correlation error and the pore-size-distribution distance. Also: sampling
time per slice for 10/25/50 DDIM steps, and the calibration of the uncertainty map
(Pearson correlation of the K-sample std with the absolute error of the mean; fraction of
voxels whose error is within 2 std). Prints markdown tables; ``--figure`` writes a PNG.
``--back-project`` adds one SR3 sample and the mean after iterative back-projection onto the LR
data (Irani & Peleg 1991, "Improving resolution by image registration": ``x += up(lr - D(x))``,
three times, ``D`` the degradation with the nominal PSF, ``up`` bicubic): how far the samples'
inconsistency with their input explains their error.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from workbench.resample import upsample  # noqa: E402
from workbench.tasks.sr import workflow  # noqa: E402
from workbench.tasks.sr.degrade import DegradeParams, degrade  # noqa: E402
from workbench.tasks.sr.metrics import evaluate_slices  # noqa: E402
from workbench.tasks.sr.predictor import SRPredictor  # noqa: E402
from workbench.tasks.sr.sr3_predictor import SR3Predictor, interval_factor  # noqa: E402
from workbench.training.schedules import cpu_model_name  # noqa: E402

METHODS = ("bicubic", "regression", "sr3_sample", "sr3_mean")
BACK_PROJECTED = ("sr3_sample_bp", "sr3_mean_bp")
#: the degradation back-projection assumes: the middle of the PSF widths the held-out data draw, no noise
NOMINAL_DEGRADATION = DegradeParams((8, 8, 1), (1.0, 1.0, 0.0), 0.0)


def back_project(x: np.ndarray, lr: np.ndarray, iterations: int = 3) -> np.ndarray:
    """Iterative back-projection (Irani & Peleg 1991): ``x += up(lr - D(x))``, bicubic ``up``."""
    for _ in range(iterations):
        residual = torch.from_numpy(np.ascontiguousarray(lr - degrade(x, NOMINAL_DEGRADATION)))
        x = x + upsample(residual[None, None], (8, 8, 1))[0, 0].numpy()
    return x
METRICS = ("psnr", "ssim", "porosity_error", "tpc_error", "psd_distance")


def calibration(mean: np.ndarray, std: np.ndarray, hr: np.ndarray, samples: int) -> dict[str, float]:
    """Correlation of the std with the mean's error; coverage of 2 std and of the 95% prediction interval."""
    err = np.abs(mean - hr).ravel()
    s = std.ravel()
    corr = float(np.corrcoef(s, err)[0, 1]) if s.std() > 0 else float("nan")
    return {"std_error_corr": corr, "within_2std": float(np.mean(err <= 2 * s)),
            "within_95_interval": float(np.mean(err <= interval_factor(samples) * s))}


def run_case(seed: int, args, regression: SRPredictor, sr3: SR3Predictor) -> tuple[dict, dict, dict]:
    case = workflow.sample_case("soil", scale=8, size=args.size, seed=seed, inplane=True, depth=args.depth,
                                grain_radius=args.grain_radius)
    lr, hr, bicubic = case["lr"][0], case["hr"][0], case["tricubic"][0]
    with torch.no_grad():
        reg = regression.predict(lr)
    t0 = time.perf_counter()
    res = sr3.predict(lr, steps=args.steps, samples=args.samples, seed=seed, keep_samples=True)
    t_sr3 = time.perf_counter() - t0
    results = {"bicubic": bicubic, "regression": reg, "sr3_sample": res.samples[0], "sr3_mean": res.mean}
    if args.back_project:
        results.update(sr3_sample_bp=back_project(res.samples[0], lr), sr3_mean_bp=back_project(res.mean, lr))
    scores = {m: evaluate_slices(v, hr) for m, v in results.items()}
    cal = calibration(res.mean, res.std, hr, args.samples) if args.samples > 1 else {}
    cal["seconds_per_slice"] = t_sr3 / lr.shape[2]
    images = {"lr": lr, "hr": hr, "std": res.std, **results}
    return scores, cal, images


def sampling_times(sr3: SR3Predictor, lr: np.ndarray, steps_list, batch: int) -> dict[int, float]:
    """Seconds per slice for one sample, DDIM with N steps, ``batch`` slices at a time."""
    out = {}
    for n in steps_list:
        t0 = time.perf_counter()
        sr3.predict(lr[:, :, :batch], steps=n, samples=1)
        out[n] = (time.perf_counter() - t0) / batch
    return out


def fmt(values: list[float], digits: int) -> str:
    v = np.asarray(values, float)
    return f"{v.mean():.{digits}f} ± {v.std():.{digits}f}" if len(v) > 1 else f"{v.mean():.{digits}f}"


def figure(images: dict, path: Path, z: int = 0) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h, w = images["lr"].shape[:2]
    panels = [("lr", f"LR ({h} x {w})"), ("bicubic", "bicubic"), ("regression", "regression (rrdb_sr)"),
              ("sr3_mean", "SR3 mean of K"), ("sr3_sample", "SR3 one sample"), ("hr", "HR reference"),
              ("std", "SR3 std (uncertainty)")]
    lo, hi = np.percentile(images["hr"], [0.5, 99.5])
    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 2.9))
    for ax, (key, title) in zip(axes, panels):
        img = images[key][:, :, z].T
        if key == "std":
            ax.imshow(img, cmap="magma", origin="lower")
        else:
            ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, origin="lower", interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="held-out soil seeds (10000 + k)")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--depth", type=int, default=8, help="central slices scored per volume")
    ap.add_argument("--grain-radius", type=float, default=None,
                    help="median grain radius of the held-out soils in HR voxels (default: drawn in 2-6, as in training)")
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--timing-steps", type=int, nargs="*", default=[10, 25, 50])
    ap.add_argument("--checkpoint", help="SR3 checkpoint (default: the shipped one)")
    ap.add_argument("--regression", help="rrdb_sr x8 in-plane checkpoint (default: the shipped sr_x8_inplane.pt)")
    ap.add_argument("--figure", type=Path, help="PNG of LR / bicubic / regression / SR3 / HR / std")
    ap.add_argument("--json", type=Path, help="write the raw numbers")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--quick", action="store_true", help="1 volume of 64^3, 2 slices, K=2, 5 steps")
    ap.add_argument("--back-project", action="store_true",
                    help="also score a sample and the mean back-projected onto the LR data")
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.size, args.depth, args.samples, args.steps = args.seeds[:1], 64, 2, 2, 5
        args.timing_steps = [5]
    if args.threads:
        torch.set_num_threads(args.threads)
    sr3 = SR3Predictor.from_checkpoint(args.checkpoint) if args.checkpoint else SR3Predictor.default()
    regression = (SRPredictor.from_checkpoint(args.regression) if args.regression
                  else SRPredictor.default(8, inplane=True))
    print(f"CPU: {cpu_model_name()}; torch threads {torch.get_num_threads()}; SR3 bf16 autocast {sr3.amp}; "
          f"K = {args.samples} samples, {args.steps} DDIM steps; held-out soil seeds "
          f"{[10000 + s for s in args.seeds]}, {args.size}^2 slices x {args.depth}"
          + (f", grain radius {args.grain_radius:g} voxels" if args.grain_radius else "") + "\n")
    methods = METHODS + (BACK_PROJECTED if args.back_project else ())
    per_method = {m: {k: [] for k in METRICS} for m in methods}
    cal_all: dict[str, list] = {}
    images = None
    for seed in args.seeds:
        scores, cal, imgs = run_case(seed, args, regression, sr3)
        images = images or imgs
        for m in methods:
            for k in METRICS:
                per_method[m][k].append(scores[m][k])
        for k, v in cal.items():
            cal_all.setdefault(k, []).append(v)
    digits = {"psnr": 2, "ssim": 3, "porosity_error": 4, "tpc_error": 4, "psd_distance": 4}
    print("| method | PSNR (dB) | SSIM | porosity error | two-point corr. error | pore-size dist. distance |")
    print("|---|---|---|---|---|---|")
    for m in methods:
        print(f"| {m} | " + " | ".join(fmt(per_method[m][k], digits[k]) for k in METRICS) + " |")
    gain = np.asarray(per_method["sr3_mean"]["psnr"]) - np.asarray(per_method["bicubic"]["psnr"])
    print(f"\nSR3 mean - bicubic: {fmt(list(gain), 2)} dB")
    if "std_error_corr" in cal_all:
        from scipy.stats import t as student_t

        k, c = args.samples, interval_factor(args.samples)
        calibrated_2std = 2 * student_t.cdf(2 / np.sqrt(1 + 1 / k), k - 1) - 1
        print(f"uncertainty map: corr(std, |error of the mean|) {fmt(cal_all['std_error_corr'], 3)}; "
              f"voxels with |error| <= 2 std {fmt(cal_all['within_2std'], 3)} (a calibrated model: "
              f"{calibrated_2std:.3f}); inside the 95% prediction interval mean +- {c:.2f} std "
              f"{fmt(cal_all['within_95_interval'], 3)} (a calibrated model: 0.950)")
    print(f"SR3 K={args.samples}, {args.steps} steps: {fmt(cal_all['seconds_per_slice'], 2)} s per slice")
    case = workflow.sample_case("soil", scale=8, size=args.size, seed=args.seeds[0], inplane=True, depth=4)
    times = sampling_times(sr3, case["lr"][0], args.timing_steps, batch=min(4, args.depth))
    print("\n| DDIM steps | seconds per slice (one sample) |\n|---|---|")
    for n, t in times.items():
        print(f"| {n} | {t:.2f} |")
    if args.figure and images is not None:
        figure(images, args.figure)
        print(f"\nfigure: {args.figure}")
    if args.json:
        args.json.write_text(json.dumps({"metrics": per_method, "calibration": cal_all, "timing": times,
                                         "cpu": cpu_model_name(), "args": {k: str(v) for k, v in vars(args).items()}},
                                        indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
