"""``workbench demo``: the whole workflow on a built-in phantom, no data to find.

Simulates a brain phantom with ground truth, denoises it with our default
self-supervised model and with DIPY's MP-PCA (as published, with the usual Rician
correction, and with our post-processing), evaluates them against the clean
signal, and writes ``comparison.png`` and ``results.md``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np

from workbench.io_utils import InputError, atomic_path, atomic_write_text
from workbench.training.events import Callback

METRIC_COLUMNS = [
    ("psnr_dwi", "PSNR DWI (dB)", "{:.2f}"),
    ("ssim_dwi", "SSIM DWI", "{:.3f}"),
    ("rmse_dwi", "RMSE DWI", "{:.2f}"),
    ("fa_rmse_wm", "FA RMSE (WM)", "{:.3f}"),
    ("md_rmse", "MD RMSE (1e-3 mm²/s)", "{:.3f}"),
]


def markdown_table(rows: dict[str, dict[str, float]], seconds: Optional[dict[str, float]] = None) -> str:
    """One row per method, the primary metrics as columns (and wall time when given)."""
    head = ["method"] + [c[1] for c in METRIC_COLUMNS] + (["time (s)"] if seconds else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, m in rows.items():
        cells = [name] + [fmt.format(m[key]) for key, _, fmt in METRIC_COLUMNS]
        if seconds:
            cells.append("" if name not in seconds else f"{seconds[name]:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def comparison_figure(path: Path, images: dict[str, np.ndarray], clean: np.ndarray, bvals: np.ndarray,
                      mask: np.ndarray) -> Path:
    """Noisy / ours / MP-PCA / clean for one volume per shell (middle axial slice), plus residual maps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from workbench.data.qspace import shell_labels

    labels = shell_labels(bvals)
    picks = [int(np.flatnonzero(labels == s)[0]) for s in np.unique(labels)]
    z = clean.shape[2] // 2
    cols = list(images) + ["clean"]
    nrows = 2 * len(picks)
    fig, axes = plt.subplots(nrows, len(cols), figsize=(2.4 * len(cols), 2.4 * nrows), squeeze=False)
    for r, j in enumerate(picks):
        vmax = np.percentile(clean[..., z, j][mask[..., z]], 99.5) if mask[..., z].any() else clean[..., j].max()
        for c, name in enumerate(cols):
            vol = clean if name == "clean" else images[name]
            ax = axes[2 * r, c]
            ax.imshow(np.rot90(vol[:, :, z, j]), cmap="gray", vmin=0, vmax=vmax)
            ax.set_title(f"{name}  b={bvals[j]:.0f}", fontsize=8)
            ax = axes[2 * r + 1, c]
            if name == "clean":
                ax.axis("off")
                continue
            resid = images["noisy"][:, :, z, j] - vol[:, :, z, j] if name != "noisy" else \
                images["noisy"][:, :, z, j] - clean[:, :, z, j]
            ax.imshow(np.rot90(resid), cmap="RdBu_r", vmin=-vmax / 3, vmax=vmax / 3)
            ax.set_title("noisy - clean" if name == "noisy" else f"noisy - {name}", fontsize=8)
        for ax in axes[2 * r:2 * r + 2].ravel():
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle("Residuals (2nd row of each pair) should look like noise: anatomy there means lost signal",
                 fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return path


def rician_variants(result: np.ndarray, sigma: float, bvals) -> tuple[np.ndarray, np.ndarray]:
    """A (X, Y, Z, N) denoiser result with the usual ``sqrt(S^2 - 2 sigma^2)`` Rician correction, and with our
    post-processing (Rician mean inversion, free-water floor): how the README's tables compare the classics."""
    from workbench.baselines import rician_bias_correct
    from workbench.inference import post_process

    vols = np.moveaxis(result, -1, 0)
    post, _ = post_process(vols, vols, np.ones(len(vols)), np.zeros(len(vols)), sigma, bvals, shrinkage=False)
    return rician_bias_correct(result, sigma), np.moveaxis(post, 0, -1)


def run_demo(out_dir: Path, snr: float = 10.0, seed: int = 0, config=None,
             callbacks: Iterable[Callback] = (), progress: Optional[Callable[[int, int], None]] = None,
             shape: tuple[int, int, int] = (64, 64, 32), scheme: str = "multishell",
             baselines: tuple[str, ...] = ("mppca",)) -> str:
    """Run the demo into ``out_dir`` (must be empty or new) and return the markdown summary."""
    import time

    from workbench import api
    from workbench.data.nifti import load_dwi, load_volume, save_dwi
    from workbench.error_estimate import describe

    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise InputError(f"{out_dir} is not empty: pass --out with a new folder")
    paths = api.simulate(out_dir / "phantom", snr=snr, seed=seed, scheme=scheme, shape=shape)
    dwi, mask = paths["dwi"], paths["mask"]
    results = {"noisy": dwi}
    seconds: dict[str, float] = {}
    report = api.denoise(dwi, out_dir / "ours.nii.gz", config=config, mask=mask, callbacks=callbacks,
                         progress=progress)
    results["ours"] = Path(report.output)
    seconds["ours"] = report.train_seconds + report.inference_seconds
    for name in baselines:
        t0 = time.perf_counter()
        info = api.baseline(name, dwi, out_dir / f"{name}.nii.gz", mask=mask)
        results[name] = Path(info["output"])
        seconds[name] = time.perf_counter() - t0
    series = load_dwi(dwi)
    figure_names = list(results)
    if "mppca" in results and report.sigma is not None:
        # MP-PCA as the README compares it: with the usual Rician correction, and with our post-processing
        variants = rician_variants(load_dwi(results["mppca"], require_gradients=False).data, report.sigma,
                                   series.bvals)
        names = ("mppca+rc (Rician correction)", "mppca+post (our Rician inversion, free-water floor)")
        for name, data in zip(names, variants):
            results[name] = save_dwi(out_dir / f"{name.split(' ')[0].replace('+', '_')}.nii.gz", series, data)
            seconds[name] = seconds["mppca"]
    rows = {name: api.evaluate(p, paths["clean"], mask=mask, bval=paths["bval"], bvec=paths["bvec"])
            for name, p in results.items()}
    clean, _, _ = load_volume(paths["clean"])
    mask_arr = load_volume(mask)[0] > 0
    images = {name: load_dwi(results[name], require_gradients=False).data for name in figure_names}
    comparison_figure(out_dir / "comparison.png", images, clean, series.bvals, mask_arr)
    text = (f"# Demo: {shape[0]}x{shape[1]}x{shape[2]} phantom, {series.n_volumes} volumes ({scheme}), "
            f"SNR {snr:g}, seed {seed}\n\n" + markdown_table(rows, seconds) +
            f"\nHeld-out estimate for ours (no reference used): RMS noise of the magnitude data <= "
            f"{report.sigma_upper:.2f}"
            + ("" if report.est_rmse_vs_clean is None else
               f", estimated RMSE to clean {report.est_rmse_vs_clean:.2f}"
               + ("" if not report.est_rmse_per_shell else
                  f" (per shell: {describe(report.est_rmse_per_shell)}; measured above: RMSE column)")
               + ("" if not report.est_warning else f"\n\n{report.est_warning}")) +
            f"\n\nFigure: {out_dir / 'comparison.png'}\n")
    atomic_write_text(out_dir / "results.md", text)
    return text
