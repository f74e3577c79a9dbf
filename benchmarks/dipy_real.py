"""Real DWI shipped with DIPY: the no-reference quality estimate and residual maps, ours vs MP-PCA.

DIPY bundles two small real acquisitions (no download): ``small_64D``
(10x10x10 voxels, 1 b0 + 64 directions at b~1000) and ``small_101D``
(6x10x10 voxels, 102 volumes on a q-space grid, b up to ~4000). There is no
clean reference, so the script reports what ``workbench denoise`` reports:

- the held-out MSE (each volume predicted without seeing it), which estimates
  *error to clean + sigma^2*, and the upper bound on sigma it implies;
- MP-PCA's own noise estimate (median over voxels of DIPY's sigma map), for scale;
- whether the residual ``noisy - denoised`` carries anatomy: its lag-1 spatial
  autocorrelation (white noise ~0, anatomy makes it positive) and its std next
  to MP-PCA's sigma (removing more than the noise means removing signal).

It writes ``residuals.png`` (a mid slice of one b0 and one diffusion-weighted
volume: noisy, denoised, residual, for ours and for MP-PCA) into ``--out``.

    python benchmarks/dipy_real.py --out docs/real
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from workbench import api
from workbench.baselines import run_baseline
from workbench.data.nifti import load_dwi

DATASETS = ("small_64D", "small_101D")


def residual_stats(noisy: np.ndarray, denoised: np.ndarray) -> tuple[float, float]:
    """Lag-1 spatial autocorrelation of the residual (mean over axes and volumes) and its std.

    White noise has autocorrelation ~0 (a smoothing denoiser's residual is slightly
    negative); anatomy left in the residual is spatially coherent and makes it positive.
    """
    res = (noisy - denoised).astype(np.float64)
    res = res - res.mean(axis=(0, 1, 2), keepdims=True)
    corr = []
    for axis in range(3):
        a = np.moveaxis(res, axis, 0)
        num = (a[1:] * a[:-1]).sum(axis=(0, 1, 2))
        den = np.sqrt((a[1:] ** 2).sum(axis=(0, 1, 2)) * (a[:-1] ** 2).sum(axis=(0, 1, 2)))
        corr.append(num / np.maximum(den, 1e-12))
    return float(np.mean(corr)), float(res.std())


def mppca_sigma(data: np.ndarray) -> float:
    from dipy.denoise.localpca import mppca

    _, sigma = mppca(data.astype(np.float64), patch_radius=2, return_sigma=True, suppress_warning=True)
    return float(np.median(sigma))


def figure(path: Path, name: str, noisy: np.ndarray, outputs: dict[str, np.ndarray], bvals: np.ndarray,
           sigma: float) -> None:
    """Mid-slice panels; every residual of a row on one scale: +-3x the larger residual std (or sigma)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    z = noisy.shape[2] // 2
    vols = [int(np.argmin(bvals)), int(np.argmin(np.abs(bvals - 1000)))]
    rows = [("noisy", noisy)] + [(k, v) for k, v in outputs.items()]
    cols = len(rows) + len(outputs)
    fig, axes = plt.subplots(len(vols), cols, figsize=(2.2 * cols, 2.4 * len(vols)), squeeze=False)
    for r, j in enumerate(vols):
        vmax = np.percentile(noisy[..., j], 99)
        lim = 3 * max([sigma] + [float((noisy[..., j] - img[..., j]).std()) for img in outputs.values()])
        c = 0
        for title, img in rows:
            axes[r, c].imshow(img[:, :, z, j].T, cmap="gray", vmin=0, vmax=vmax, origin="lower")
            axes[r, c].set_title(f"{title}, b={bvals[j]:.0f}", fontsize=8)
            c += 1
        for title, img in outputs.items():
            res = noisy[:, :, z, j] - img[:, :, z, j]
            axes[r, c].imshow(res.T, cmap="RdBu_r", vmin=-lim, vmax=lim, origin="lower")
            axes[r, c].set_title(f"noisy - {title}", fontsize=8)
            c += 1
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"DIPY {name}: residuals should look like noise (no anatomy)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    from dipy.data import get_fnames

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="folder for the residual figures")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for name in DATASETS:
        fimg, fbval, fbvec = get_fnames(name=name)
        series = load_dwi(fimg, bval=fbval, bvec=fbvec)
        t0 = time.perf_counter()
        ours, report = api.denoise_series(series)
        t_ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        mp = run_baseline("mppca", series.data, series.bvals)
        t_mp = time.perf_counter() - t0
        sig = mppca_sigma(series.data)
        for method, out, sec in (("ours", ours, t_ours), ("mppca", mp, t_mp)):
            corr, rstd = residual_stats(series.data, out)
            rows.append((name, method, series.data.shape, report.heldout_mse if method == "ours" else None,
                         report.sigma_upper if method == "ours" else None,
                         report.est_rmse_vs_clean if method == "ours" else None, sig, rstd, corr, sec))
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            figure(args.out / f"residuals_{name}.png", name, series.data, {"ours": ours, "mppca": mp},
                   series.bvals, sig)
    print("| data | method | shape | held-out MSE | sigma bound | est. RMSE to clean | MP-PCA sigma | residual std | "
          "residual lag-1 autocorr | time s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, method, shape, mse, bound, est, sig, rstd, corr, sec in rows:
        cells = [name, method, "x".join(map(str, shape)), "" if mse is None else f"{mse:.4g}",
                 "" if bound is None else f"{bound:.3g}", "" if est is None else f"{est:.3g}", f"{sig:.3g}",
                 f"{rstd:.3g}", f"{corr:+.3f}", f"{sec:.0f}"]
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
