"""Biplanar X-ray -> CT benchmark: stage 1, stage 1 + 2 and stage 2 alone against back-projection, atlas, ridge.

    python benchmarks/xray2ct.py --work WORK      # simulate, train what is missing, print the README tables
    python benchmarks/xray2ct.py --shipped --work WORK   # score the shipped networks instead (no training)
    python benchmarks/xray2ct.py --quick          # tiny smoke run (size 32, a few steps)

Data (``workbench xray2ct simulate``, parallel beam, 64^3 + 128^3 references): training
phantoms from seed 1 (``--n-train``); three held-out test sets from seeds 101, 102, 103
(phantom seeds ``s * 1_000_003 + i``, disjoint from every training phantom; the network's
validation split is a tenth of the training cases, so test cases are never seen in
training or model selection). Each test case's X-rays carry their own fixed photon noise
(1e5 photons per pixel), the same for every method. The real chest CT's held-out top 25%
is evaluated from the top 240 mm of the scan, metrics on the held-out rows only
(:func:`workbench.tasks.xray2ct.real_ct.chest_test_volume`).

Rows: back-projection, atlas, ridge (fitted on the training split + the same real-CT
crops as the network), stage 1 (64^3), stage 1 fused with ridge (the fusion trained on
``--n-fusion`` phantoms of seed 2, which neither stage 1 nor ridge saw; see
:mod:`workbench.tasks.xray2ct.fusion`), and at 128^3: tricubic of the 64^3 reference,
stage 2 from the reference (trained on the pooled reference), stage 1 + stage 2 (trained
on stage-1 outputs). Per test set the mean over cases, then mean +- std over the three
sets. Training time and peak RAM come from the training subprocesses. ``--shipped``
scores the networks in the package (no stage 2 from the reference: none ships; the
fused volume goes through the shipped stage 2 as ``predict --refine`` does).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from workbench.data.nifti import load_volume  # noqa: E402
from workbench.tasks.xray2ct import workflow  # noqa: E402
from workbench.tasks.xray2ct.data import VIEW_FILES, load_views  # noqa: E402
from workbench.tasks.xray2ct.metrics import evaluate_ct  # noqa: E402
from workbench.training.schedules import cpu_model_name  # noqa: E402

KEYS = ("psnr", "ssim", "dice_lung", "dice_bone", "reprojection_error", "mae_hu")
TEST_SEEDS = (101, 102, 103)
FUSED = "stage 1 fused with ridge"
_RUNNER = ("import resource, sys, json; from workbench.cli import main; rc = main(sys.argv[1:]); "
           "print('PEAK_RSS_MB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024); sys.exit(rc)")


def cli(*args, log: Path) -> dict:
    """Run ``workbench ARGS`` in a subprocess; seconds and peak RSS (MB)."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _RUNNER, "--quiet", *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT)
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode:
        raise SystemExit(f"workbench {' '.join(map(str, args))} failed:\n{proc.stderr[-2000:]}")
    rss = [float(line.split()[1]) for line in proc.stdout.splitlines() if line.startswith("PEAK_RSS_MB")]
    return {"seconds": time.perf_counter() - t0, "peak_rss_mb": rss[-1] if rss else float("nan")}


def prepare(work: Path, args) -> dict:
    """Simulate and train what is missing; returns training costs (cached in WORK/costs.json)."""
    costs_path = work / "costs.json"
    costs = json.loads(costs_path.read_text()) if costs_path.is_file() else {}
    size, extra = args.size, (["--workers", str(args.workers)] if args.workers else [])
    if not (work / "train" / "dataset.json").is_file():
        costs["simulate"] = cli("xray2ct", "simulate", work / "train", "--n", args.n_train, "--size", size,
                                "--seed", 1, *extra, log=work / "simulate.log")
    for s in TEST_SEEDS:
        cli("xray2ct", "simulate", work / f"test{s}", "--n", args.n_test, "--size", size, "--seed", s, *extra,
            log=work / f"simulate{s}.log")
    cfg = ["--config", args.config] if args.config else []
    steps = ["--steps", args.steps] if args.steps else []
    if not (work / "fuse" / "dataset.json").is_file():
        cli("xray2ct", "simulate", work / "fuse", "--n", args.n_fusion, "--size", size, "--hr-size", 0, "--seed", 2,
            *extra, log=work / "simulate_fuse.log")
    jobs = {"stage1": ("1", []), "linear": ("linear", []),
            "stage2": ("2", ["--stage1", work / "stage1" / "best.pt"]), "stage2_truth": ("2", ["--from-truth"]),
            "fusion": ("fusion", ["--stage1", work / "stage1" / "best.pt", "--linear", work / "linear" / "linear.npz"])}
    for name, (stage, more) in jobs.items():
        done = work / name / ("linear.npz" if stage == "linear" else "best.pt")
        if done.is_file() and name in costs:
            continue
        if stage == "fusion":
            st = ["--steps", args.fusion_steps] if args.fusion_steps else []
            costs[name] = cli("xray2ct", "train", work / "fuse", "--out", work / name, "--stage", stage, *more, *st,
                              log=work / f"train_{name}.log")
            costs_path.write_text(json.dumps(costs, indent=2))
            continue
        conf = cfg if stage == "1" else (["--config", args.sr_config] if args.sr_config and stage == "2" else [])
        st = (steps if stage == "1" else (["--steps", args.sr_steps] if args.sr_steps else [])) if stage != "linear" \
            else []
        costs[name] = cli("xray2ct", "train", work / "train", "--out", work / name, "--stage", stage, *more, *conf,
                          *st, log=work / f"train_{name}.log")
        costs_path.write_text(json.dumps(costs, indent=2))
    return costs


def tricubic(hu: np.ndarray) -> np.ndarray:
    import torch

    from workbench.resample import upsample

    return upsample(torch.from_numpy(np.asarray(hu, np.float32))[None, None], 2, "cubic")[0, 0].numpy()


def evaluate_set(folder: Path, predictor, linear, fusion, refine_ckpts: dict, n_refine: int
                 ) -> dict[str, list[dict]]:
    rows: dict[str, list[dict]] = {}
    for k, case in enumerate(sorted(folder.glob("case_*"))):
        xr = load_views(case / VIEW_FILES["ap"], case / VIEW_FILES["lateral"])
        g = predictor.geometry
        ref, _, _ = load_volume(case / "ct.nii.gz")
        ref_hr, _, _ = load_volume(case / "ct_hr.nii.gz")
        vols = {}
        for method in ("backprojection", "atlas", "ridge", "network"):
            t0 = time.perf_counter()
            vols[method] = workflow.reconstruct(method, xr, g, predictor=predictor, linear=linear)
            sec = time.perf_counter() - t0
            rows.setdefault(method if method != "network" else "stage 1", []).append(
                {**evaluate_ct(vols[method], ref, xrays=xr, geometry=g), "seconds": sec})
        t0 = time.perf_counter()
        vols["fused"], info = fusion.fuse(vols["network"], xr, g)
        rows.setdefault(FUSED, []).append({**evaluate_ct(vols["fused"], ref, xrays=xr, geometry=g),
                                           "seconds": time.perf_counter() - t0 + rows["stage 1"][-1]["seconds"],
                                           "fused": info["fused"]})
        if k >= n_refine:
            continue
        rows.setdefault("tricubic (reference 64^3)", []).append(evaluate_ct(tricubic(ref), ref_hr))
        for name, (ckpt, source) in refine_ckpts.items():
            t0 = time.perf_counter()
            fine = workflow.refine({"stage1": vols["network"], "fused": vols["fused"]}.get(source, ref), ckpt)
            rows.setdefault(name, []).append({**evaluate_ct(fine, ref_hr), "seconds": time.perf_counter() - t0})
    return rows


def real_ct_rows(predictor, linear, fusion) -> dict[str, dict]:
    """The real CT's held-out slab from X-rays of our projector (64^3 resample) and of diffdrr (native CT)."""
    import torch

    from workbench.tasks.xray2ct.drr import render
    from workbench.tasks.xray2ct.geometry import add_photon_noise, project_hu
    from workbench.tasks.xray2ct.real_ct import chest_test_native, chest_test_volume

    g = predictor.geometry
    vol, first = chest_test_volume(g)
    sources = {"our projector": project_hu(vol, g), "diffdrr, native CT": render(*chest_test_native(g), g)}
    out = {}
    for source, clean in sources.items():
        xr = add_photon_noise(torch.from_numpy(clean), g.photons, torch.Generator().manual_seed(7)).numpy()
        for method in ("backprojection", "atlas", "ridge", "network"):
            rec = workflow.reconstruct(method, xr, g, predictor=predictor, linear=linear)
            name = method if method != "network" else "stage 1"
            out[f"{name} ({source})"] = evaluate_ct(rec, vol, xrays=xr, geometry=g, rows=slice(first, None))
            if method == "network":
                fused, info = fusion.fuse(rec, xr, g)
                out[f"{FUSED} ({source})"] = {**evaluate_ct(fused, vol, xrays=xr, geometry=g, rows=slice(first, None)),
                                              "fused": info["fused"], "ridge_error": info["ridge_reprojection_error"]}
    return out


def figure(path: Path, case: Path, predictor, linear, fusion) -> None:
    """The two X-rays, ridge, stage 1, stage 1 fused with ridge, the reference and the fused volume's difference
    (coronal and axial)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xr = load_views(case / VIEW_FILES["ap"], case / VIEW_FILES["lateral"])
    g = predictor.geometry
    ref, _, _ = load_volume(case / "ct.nii.gz")
    s1 = predictor.predict(xr)
    fused = fusion.apply(s1, xr, g)
    vols = {"ridge": workflow.reconstruct("ridge", xr, g, linear=linear), "stage 1": s1, "fused": fused,
            "reference (64^3)": ref, "fused - reference": fused - ref}
    fig, axes = plt.subplots(2, 6, figsize=(18, 6.4))
    for r, (img, title) in enumerate(((xr[0], "AP X-ray"), (xr[1], "lateral X-ray"))):
        axes[r, 0].imshow(img.T, origin="lower", cmap="gray")
        axes[r, 0].set_title(title)
    for c, (name, v) in enumerate(vols.items(), start=1):
        diff = name.endswith("reference") and "-" in name
        kw = {"cmap": "RdBu_r", "vmin": -400, "vmax": 400} if diff else {"cmap": "gray", "vmin": -1000, "vmax": 1000}
        axes[0, c].imshow(v[:, v.shape[1] // 2 + 4].T, origin="lower", **kw)
        axes[0, c].set_title(f"{name}, coronal")
        axes[1, c].imshow(v[:, :, int(v.shape[2] * 0.6)].T, origin="lower", **kw)
        axes[1, c].set_title("axial")
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def fmt(values: list[float], digits: int) -> str:
    v = np.asarray(values, float)
    if np.isnan(v).all():
        return "-"
    return f"{np.nanmean(v):.{digits}f} ± {np.nanstd(v):.{digits}f}" if len(v) > 1 else f"{v[0]:.{digits}f}"


def table(per_set: list[dict[str, list[dict]]]) -> str:
    names = list(per_set[0])
    lines = ["| method | PSNR (dB) | SSIM | Dice lungs | Dice bone | re-projection error | MAE (HU) |",
             "|---|---|---|---|---|---|---|"]
    digits = {"psnr": 2, "ssim": 3, "dice_lung": 3, "dice_bone": 3, "reprojection_error": 3, "mae_hu": 1}
    for name in names:
        cells = []
        for k in KEYS:
            vals = [[r[k] for r in s[name] if k in r] for s in per_set]
            means = [float(np.mean(v)) if v else float("nan") for v in vals]
            cells.append(fmt(means, digits[k]))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("bench_xray2ct"))
    ap.add_argument("--n-train", type=int, default=600)
    ap.add_argument("--n-test", type=int, default=12)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, help="stage-1 steps (default: the task's)")
    ap.add_argument("--sr-steps", type=int, help="stage-2 steps (default: the sr task's x2)")
    ap.add_argument("--config", help="stage-1 config")
    ap.add_argument("--sr-config", help="stage-2 config (task sr, scale 2)")
    ap.add_argument("--workers", type=int)
    ap.add_argument("--n-refine", type=int, default=4, help="128^3 rows on the first N cases of each test set "
                    "(stage 2 costs seconds per case on CPU)")
    ap.add_argument("--n-fusion", type=int, default=240, help="seed-2 phantoms the fusion learns from")
    ap.add_argument("--fusion-steps", type=int, help="fusion steps (default: the fusion config's)")
    ap.add_argument("--shipped", action="store_true", help="score the shipped networks (only the test sets are "
                    "simulated into WORK)")
    ap.add_argument("--quick", action="store_true", help="tiny smoke run: size 32, 12 training cases, 4 steps")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--figure", type=Path, help="write the README figure (first case of the first test set)")
    args = ap.parse_args(argv)
    if args.quick:
        args.size, args.n_train, args.n_test, args.steps, args.sr_steps = 32, 12, 2, 4, 2
        args.n_fusion, args.fusion_steps = 6, 4
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    print(f"CPU: {cpu_model_name()}; torch threads {os.environ.get('OMP_NUM_THREADS', 'default')}")
    from workbench.tasks.xray2ct.fusion import StageOneFusion

    if args.shipped:
        costs = {}
        for s in TEST_SEEDS:
            cli("xray2ct", "simulate", work / f"test{s}", "--n", args.n_test, "--seed", s, log=work / f"sim{s}.log")
        files = {"stage1": workflow.DEFAULT_STAGE1, "linear": workflow.DEFAULT_LINEAR,
                 "fusion": workflow.DEFAULT_FUSION, "stage2": workflow.DEFAULT_STAGE2}
        refine = {"stage 1 + stage 2 (128^3)": (files["stage2"], "stage1"),
                  f"{FUSED} + stage 2 (128^3)": (files["stage2"], "fused")}
    else:
        costs = prepare(work, args)
        files = {"stage1": work / "stage1" / "best.pt", "linear": work / "linear" / "linear.npz",
                 "fusion": work / "fusion" / "best.pt"}
        refine = {"stage 2 from the reference (128^3)": (work / "stage2_truth" / "best.pt", "reference"),
                  "stage 1 + stage 2 (128^3)": (work / "stage2" / "best.pt", "stage1")}
    predictor = workflow.XrayPredictor.from_checkpoint(files["stage1"], fusion=False)
    linear = workflow.open_linear(files["linear"])
    fusion = StageOneFusion.load(files["fusion"], files["stage1"], files["linear"])
    per_set = [evaluate_set(work / f"test{s}", predictor, linear, fusion, refine, args.n_refine) for s in TEST_SEEDS]
    print(f"\nHeld-out phantoms ({len(TEST_SEEDS)} test sets x {args.n_test} cases, 128^3 rows on the first "
          f"{min(args.n_refine, args.n_test)} of each; mean ± std over the sets); 64^3 rows against ct.nii.gz, "
          "128^3 rows against ct_hr.nii.gz\n")
    print(table(per_set))
    fused = [r["fused"] for s in per_set for r in s[FUSED]]
    print(f"\nfused with ridge on {sum(fused)} of {len(fused)} phantom cases (the others: ridge does not fit their "
          f"X-rays, re-projection error above {fusion.ridge_error_limit or float('nan'):.3f})")
    real = real_ct_rows(predictor, linear, fusion)
    print("\nReal chest CT, held-out top 25% (rows of the top 240 mm above the training part; one volume)\n")
    print(table([{k: [v] for k, v in real.items()}]))
    for name, row in real.items():
        if "fused" in row:
            print(f"{name}: {'fused' if row['fused'] else 'not fused, the network alone'} (ridge re-projection "
                  f"error {row['ridge_error']:.3f}, limit {fusion.ridge_error_limit or float('nan'):.3f})")
    print("\nCosts (this CPU)\n\n| job | seconds | peak RSS (MB) |\n|---|---|---|")
    for name, c in costs.items():
        print(f"| {name} | {c['seconds']:.0f} | {c['peak_rss_mb']:.0f} |")
    for name in ("stage 1", FUSED, "backprojection", "ridge", "stage 1 + stage 2 (128^3)"):
        sec = [r["seconds"] for s in per_set for r in s[name]]
        print(f"| inference {name} (per case) | {np.mean(sec):.2f} | - |")
    print(f"| this process (evaluation) | - | {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} |")
    if args.figure:
        figure(args.figure, work / f"test{TEST_SEEDS[0]}" / "case_000", predictor, linear, fusion)
    if args.json:
        args.json.write_text(json.dumps({"phantoms": per_set, "real": real, "costs": costs}, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
