"""NIR-DOT benchmark: the network (with and without spatial attention) against Tikhonov and Gauss-Newton.

    python benchmarks/dot.py --train DATA_TRAIN --test DATA_TEST --runs RUNS   # the README table
    python benchmarks/dot.py --quick                                            # tiny smoke run (grid 16)

Data: phantoms of the built-in geometry (grid 32, 16 sources x 16 detectors, CW + 140 MHz)
simulated by ``workbench dot simulate``: training cases from seed 1 (``--n-train``), held-out
test cases from seed 2 (phantom seeds ``2 * 1_000_003 + i``, disjoint from every training
phantom); the network's validation split is a tenth of the training cases, so the test cases
are never seen in training or model selection. Each test case gets its own fixed noise
(1% amplitude, 0.5 deg phase; ``--noise``), the same for every method.

Methods: Tikhonov (Rytov, lambda by GCV), Gauss-Newton (``--gn-iterations`` regularised
iterations, on the first ``--gn-cases`` test cases: ~30 s each at grid 32), and the network
trained with each of ``--seeds`` (default 0 1 2) with and without the spatial attention
blocks at equal steps. Metrics per channel (``workbench.tasks.dot.metrics.evaluate_dot``):
RMSE (1/mm), PSNR (peak = range of the phantom in the body), SSIM, contrast recovery,
centroid localisation error (mm), Dice of the half-max region, crosstalk. The network rows
give the mean over test cases for each training seed, then mean +- std over seeds; the
baselines mean +- std over cases. Prints markdown tables and writes ``--json``/``--figure``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from workbench.tasks import get_task  # noqa: E402
from workbench.tasks.dot import workflow  # noqa: E402
from workbench.tasks.dot.data import add_noise, load_dataset  # noqa: E402
from workbench.tasks.dot.metrics import evaluate_dot, summarize  # noqa: E402
from workbench.tasks.dot.physics import homogeneous  # noqa: E402
from workbench.training.schedules import cpu_model_name  # noqa: E402

KEYS = ("rmse_mua", "rmse_mus", "psnr_mua", "psnr_mus", "ssim_mua", "ssim_mus", "contrast_mua", "contrast_mus",
        "loc_error_mua", "loc_error_mus", "dice_mua", "dice_mus", "crosstalk_mua_to_mus", "crosstalk_mus_to_mua",
        "seconds")


def simulate(folder: Path, n: int, seed: int, grid: int, workers: int) -> float:
    t0 = time.perf_counter()
    workflow.simulate(folder, n=n, grid=grid, seed=seed, workers=workers)
    return time.perf_counter() - t0


def train_run(train_dir: Path, run_dir: Path, seed: int, attention: bool, steps: int, grid: int,
              threads=None) -> Path:
    best = run_dir / "best.pt"
    if best.is_file() and (run_dir / "done").is_file():
        return best
    config = get_task("dot").default_config(grid=grid)
    config.train.seed = seed
    config.train.steps = steps or config.train.steps
    config.train.val_every = config.train.checkpoint_every = max(50, config.train.steps // 10)
    config.train.threads = threads
    config.model.options = {**config.model.options, "spatial_attention": attention}
    result = workflow.train(train_dir, run_dir, config)
    (run_dir / "done").write_text(json.dumps({"steps": result.steps_done, "reason": result.reason,
                                              "best_loss": result.best_loss}))
    return best


def noisy_cases(test, sigma_amp, sigma_phase):
    for i in range(len(test)):
        rng = np.random.default_rng(1_000_000 + i)
        yield i, add_noise(test.data[i], rng, sigma_amp, sigma_phase)


def score(method_fn, test, cases, noise) -> list[dict]:
    g = test.geometry
    out = []
    for i, data in noisy_cases(test, *noise):
        if i not in cases:
            continue
        t0 = time.perf_counter()
        mu = method_fn(data)
        sec = time.perf_counter() - t0
        m = evaluate_dot(mu, test.mu[i].astype(np.float32), g.body_mask, inclusions=test.labels[i].astype(int),
                         background=g.background, voxel_mm=g.voxel_mm)
        out.append({**m, "seconds": sec})
    return out


def cached_scores(path: Path, compute) -> list[dict]:
    """Scores of a deterministic method, kept in ``path`` so a rerun (or a parallel stage) reuses them."""
    if path.is_file():
        return json.loads(path.read_text())
    scores = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(scores))
    return scores


def fmt(mean, std, digits=4):
    if not np.isfinite(mean):
        return "n/a"
    return f"{mean:.{digits}g} ± {std:.2g}" if np.isfinite(std) else f"{mean:.{digits}g}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=Path, default=Path("dot_bench/train"))
    ap.add_argument("--test", type=Path, default=Path("dot_bench/test"))
    ap.add_argument("--runs", type=Path, default=Path("dot_bench/runs"))
    ap.add_argument("--n-train", type=int, default=800)
    ap.add_argument("--n-test", type=int, default=120)
    ap.add_argument("--grid", type=int, default=32)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=None, help="steps of each run (default: the task's default config)")
    ap.add_argument("--threads", type=int, help="torch threads per training run (parallel stages: 1)")
    ap.add_argument("--gn-cases", type=int, default=40)
    ap.add_argument("--gn-iterations", type=int, default=3)
    ap.add_argument("--noise", type=float, nargs=2, default=(0.01, 0.5), metavar=("AMP", "PHASE_DEG"))
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--no-attention-ablation", action="store_true")
    ap.add_argument("--stage", choices=("all", "baselines", "att", "noatt"), default="all",
                    help="run one part (to run parts in parallel processes); 'all' reuses what they left")
    ap.add_argument("--quick", action="store_true", help="grid 16, 24 train / 6 test cases, 30 steps, 1 seed")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--figure", type=Path)
    args = ap.parse_args(argv)
    if args.quick:
        args.grid, args.n_train, args.n_test, args.steps, args.seeds, args.gn_cases = 16, 24, 6, 30, [0], 2
    print(f"CPU: {cpu_model_name()}; grid {args.grid}; noise {args.noise[0]:g} amplitude, {args.noise[1]:g} deg")
    t_train_data = 0.0 if args.stage == "baselines" else simulate(args.train, args.n_train, 1, args.grid,
                                                                  args.workers)
    t_test_data = simulate(args.test, args.n_test, 2, args.grid, args.workers)
    test = load_dataset(args.test)
    n_test = len(test)
    print(f"data: {args.n_train} training cases, {n_test} test cases "
          f"(this call: {t_train_data + t_test_data:.0f} s; cases already on disk are reused)")

    rows: dict[str, dict] = {}
    all_cases = set(range(n_test))
    g = test.geometry
    gn_cases = set(range(min(args.gn_cases, n_test)))
    if args.stage in ("all", "baselines"):
        flat = homogeneous(g).astype(np.float32)
        rows["homogeneous background (no reconstruction)"] = summarize(score(lambda d: flat, test, all_cases,
                                                                             args.noise))
        rows["Tikhonov (Rytov, GCV)"] = summarize(cached_scores(args.runs / "scores_tikhonov.json", lambda: score(
            lambda d: workflow.reconstruct("tikhonov", d, g)[0], test, all_cases, args.noise)))
        rows[f"Gauss-Newton ({args.gn_iterations} it., {len(gn_cases)} cases)"] = summarize(cached_scores(
            args.runs / f"scores_gn{args.gn_iterations}_{len(gn_cases)}.json", lambda: score(
                lambda d: workflow.reconstruct("gauss-newton", d, g, iterations=args.gn_iterations)[0], test,
                gn_cases, args.noise)))
    if args.stage == "baselines":
        return 0
    variants = [("network (attention)", True)] + ([] if args.no_attention_ablation else
                                                  [("network (no attention)", False)])
    if args.stage in ("att", "noatt"):
        variants = [v for v in variants if v[1] == (args.stage == "att")]
    per_seed: dict[str, list[dict]] = {}
    for label, attention in variants:
        for seed in args.seeds:
            run = args.runs / f"{'att' if attention else 'noatt'}_seed{seed}"
            best = train_run(args.train, run, seed, attention, args.steps, args.grid, args.threads)
            if args.stage != "all":
                continue
            pred = workflow.DotPredictor.from_checkpoint(best)
            s = summarize(score(lambda d: pred.predict(d), test, all_cases, args.noise))
            per_seed.setdefault(label, []).append({k: v[0] for k, v in s.items()})
        if args.stage != "all":
            return 0
        seeds = per_seed[label]
        rows[f"{label}, {len(seeds)} seeds"] = {
            k: (float(np.nanmean([s[k] for s in seeds])), float(np.nanstd([s[k] for s in seeds])), len(seeds))
            for k in seeds[0]}

    if not args.quick:   # the network that ships (workflow.DEFAULT_CHECKPOINT: scripts/train_dot_weights.py)
        pred = workflow.DotPredictor.from_checkpoint()
        rows["shipped checkpoint (= attention, seed 0)"] = summarize(score(lambda d: pred.predict(d), test, all_cases,
                                                                         args.noise))
    names = list(rows)
    header = "| metric | " + " | ".join(names) + " |"
    print("\n" + header + "\n|" + "---|" * (len(names) + 1))
    for k in KEYS:
        print(f"| {k} | " + " | ".join(fmt(*rows[n].get(k, (np.nan, np.nan, 0))[:2]) for n in names) + " |")
    tik = rows["Tikhonov (Rytov, GCV)"]
    for label in per_seed:
        net = rows[f"{label}, {len(per_seed[label])} seeds"]
        for ch in ("mua", "mus"):
            red = 1 - net[f"rmse_{ch}"][0] / tik[f"rmse_{ch}"][0]
            print(f"{label}: RMSE {ch} {100 * red:+.1f}% lower than Tikhonov")
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu_model_name(), "rows": rows, "per_seed": per_seed,
                                         "n_test": n_test, "gn_cases": len(gn_cases), "args": {
                                             k: str(v) for k, v in vars(args).items()}}, indent=1))
    if args.figure:
        figure(args, test, args.figure, args.runs / "att_seed0" / "best.pt")
    return 0


def figure(args, test, path: Path, checkpoint: Path) -> None:
    """Phantom, Tikhonov, Gauss-Newton, network: mu_a and mu_s' through the largest inclusion of test case 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = test.geometry
    _, data = next(noisy_cases(test, *args.noise))
    pred = workflow.DotPredictor.from_checkpoint(checkpoint)
    recs = {"phantom": test.mu[0].astype(np.float32),
            "Tikhonov": workflow.reconstruct("tikhonov", data, g)[0],
            "Gauss-Newton": workflow.reconstruct("gauss-newton", data, g, iterations=args.gn_iterations)[0],
            "network": pred.predict(data)}
    labels = test.labels[0]
    ids, counts = np.unique(labels[labels > 0], return_counts=True)
    z = int(np.round(np.argwhere(labels == ids[counts.argmax()])[:, 2].mean())) if len(ids) else g.grid // 2
    fig, axes = plt.subplots(2, 4, figsize=(12, 6.2))
    for row, (ch, name, cmap) in enumerate(((0, "mu_a", "magma"), (1, "mu_s'", "viridis"))):
        ref = recs["phantom"][ch][g.body_mask]
        vmin, vmax = float(ref.min()), float(ref.max())
        for col, (title, mu) in enumerate(recs.items()):
            ax = axes[row, col]
            im = ax.imshow(np.where(g.body_mask[..., z], mu[ch][..., z], np.nan).T, origin="lower", cmap=cmap,
                           vmin=vmin, vmax=vmax)
            ax.set_title(f"{title}: {name}")
            ax.axis("off")
        fig.colorbar(im, ax=axes[row].tolist(), shrink=0.8, label=f"{name} (1/mm)")
    fig.suptitle(f"held-out phantom, axial slice z={z} (1% amplitude, 0.5 deg phase noise)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    print(f"figure: {path}")


if __name__ == "__main__":
    sys.exit(main())
