"""Probe for issue 13: does a small 3D CNN that fuses stage 1 with the ridge shape model beat ridge by 1 dB?

    python benchmarks/xray2ct_fusion_probe.py --work probe_fusion      # ~25 min on 2 cores

Not a task stage yet: this measures whether the design is worth building. The shipped
stage-1 network (``xray2ct_stage1.pt``) and the shipped ridge model
(``xray2ct_linear.npz``), both fitted on phantoms of seed 1, are applied to *fresh*
phantoms of seed 2 (``--n-train``; never seen by either, so their errors there are
out-of-sample errors, the ones the fusion must learn to correct). A small 3D U-Net
(``Fusion``) reads the stage-1 volume, the ridge volume and the plain back-projection and
predicts a per-voxel weight between stage 1 and ridge plus a residual (head initialised
to zero: it starts as the 50/50 mean). It trains on random 32^3 crops (left-right
mirrored at random) with the MSE on the HU window [-1000, 1000]; a tenth of the seed-2
cases is its validation split. Held out: the benchmark's three test sets (seeds 101,
102, 103; 12 cases each, their own photon noise). Metrics as ``benchmarks/xray2ct.py``
(PSNR and SSIM on the window mapped to [0, 1], mean absolute error in HU); mean +- std
over the three sets.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TEST_SEEDS = (101, 102, 103)


def simulate(folder: Path, n: int, seed: int) -> None:
    if not (folder / "dataset.json").is_file():
        subprocess.run([sys.executable, "-m", "workbench.cli", "--quiet", "xray2ct", "simulate", str(folder), "--n",
                        str(n), "--size", "64", "--hr-size", "0", "--seed", str(seed)], check=True, cwd=ROOT)


def estimates(folder: Path, cache: Path) -> dict[str, np.ndarray]:
    """Stage 1, ridge, back-projection and reference of every case, HU / 1000 as float16 (cached)."""
    if cache.is_file():
        return dict(np.load(cache))
    from workbench.data.nifti import load_volume
    from workbench.tasks.xray2ct import workflow
    from workbench.tasks.xray2ct.baselines import backprojection
    from workbench.tasks.xray2ct.data import VIEW_FILES, load_views

    predictor, linear = workflow.XrayPredictor.from_checkpoint(), workflow.open_linear()
    out: dict[str, list] = {"s1": [], "ridge": [], "bp": [], "ref": []}
    with torch.no_grad():
        for case in sorted(folder.glob("case_*")):
            xr = load_views(case / VIEW_FILES["ap"], case / VIEW_FILES["lateral"])
            out["s1"].append(predictor.predict(xr))
            out["ridge"].append(workflow.reconstruct("ridge", xr, predictor.geometry, linear=linear))
            out["bp"].append(backprojection(xr, predictor.geometry))
            out["ref"].append(load_volume(case / "ct.nii.gz")[0])
    arrays = {k: (np.stack(v) / 1000.0).astype(np.float16) for k, v in out.items()}
    np.savez(cache, **arrays)
    return arrays


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(cin, cout, 3, padding=1), nn.GroupNorm(4, cout), nn.GELU(),
                         nn.Conv3d(cout, cout, 3, padding=1), nn.GroupNorm(4, cout), nn.GELU())


class Fusion(nn.Module):
    """(B, 3, D, H, W) [stage 1, ridge, back-projection] in HU/1000 -> w * stage 1 + (1 - w) * ridge + residual."""

    def __init__(self, width: int = 16):
        super().__init__()
        c = width
        self.e0, self.e1, self.e2 = _block(3, c), _block(c, 2 * c), _block(2 * c, 4 * c)
        self.d1, self.d0 = _block(6 * c, 2 * c), _block(3 * c, c)
        self.head = nn.Conv3d(c, 2, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f0 = self.e0(x)
        f1 = self.e1(F.avg_pool3d(f0, 2))
        f2 = self.e2(F.avg_pool3d(f1, 2))
        g1 = self.d1(torch.cat([F.interpolate(f2, scale_factor=2), f1], 1))
        g0 = self.d0(torch.cat([F.interpolate(g1, scale_factor=2), f0], 1))
        h = self.head(g0)
        w = torch.sigmoid(h[:, :1])
        return w * x[:, :1] + (1 - w) * x[:, 1:2] + 0.1 * h[:, 1:2]


def stack_inputs(d: dict[str, np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack([d["s1"], d["ridge"], d["bp"]], 1).astype(np.float32))


def train(d: dict[str, np.ndarray], steps: int, seed: int = 0) -> Fusion:
    torch.manual_seed(seed)
    x, y = stack_inputs(d), torch.from_numpy(d["ref"].astype(np.float32))[:, None]
    n_val = max(1, len(x) // 10)
    xv, yv, x, y = x[-n_val:], y[-n_val:], x[:-n_val], y[:-n_val]
    net = Fusion()
    opt = torch.optim.AdamW(net.parameters(), 2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=steps)
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for it in range(steps):
        idx = torch.randint(len(x), (4,), generator=g)
        o = torch.randint(0, x.shape[-1] - 32 + 1, (3,), generator=g).tolist()
        crop = (slice(None), slice(None), slice(o[0], o[0] + 32), slice(o[1], o[1] + 32), slice(o[2], o[2] + 32))
        xb, yb = x[idx][crop], y[idx][crop]
        if bool(torch.rand(1, generator=g) < 0.5):
            xb, yb = xb.flip(2), yb.flip(2)   # left-right (x is the patient's left-right axis)
        loss = F.mse_loss(net(xb).clamp(-1, 1), yb.clamp(-1, 1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if (it + 1) % 250 == 0 or it + 1 == steps:
            with torch.no_grad():
                val = np.mean([float(F.mse_loss(net(xv[k:k + 2]).clamp(-1, 1), yv[k:k + 2].clamp(-1, 1)))
                               for k in range(0, n_val, 2)])
            print(f"step {it + 1}: train MSE {loss.item():.5f}, validation MSE {val:.5f} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
    return net.eval()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("probe_fusion"))
    ap.add_argument("--n-train", type=int, default=240)
    ap.add_argument("--n-test", type=int, default=12)
    ap.add_argument("--steps", type=int, default=800)
    args = ap.parse_args(argv)
    from workbench.tasks.xray2ct.metrics import evaluate_ct
    from workbench.training.schedules import cpu_model_name

    args.work.mkdir(parents=True, exist_ok=True)
    print(f"# CPU: {cpu_model_name()}, torch threads {torch.get_num_threads()}")
    simulate(args.work / "fuse_seed2", args.n_train, 2)
    for s in TEST_SEEDS:
        simulate(args.work / f"test{s}", args.n_test, s)
    net = train(estimates(args.work / "fuse_seed2", args.work / "fuse_seed2.npz"), args.steps)
    rows: dict[str, list[np.ndarray]] = {}
    for s in TEST_SEEDS:
        d = estimates(args.work / f"test{s}", args.work / f"test{s}.npz")
        with torch.no_grad():
            fused = torch.cat([net(t) for t in stack_inputs(d).split(2)])[:, 0].numpy()
        methods = {"ridge": d["ridge"], "stage 1": d["s1"],
                   "mean of stage 1 and ridge": (d["s1"].astype(np.float32) + d["ridge"]) / 2,
                   "stage 1 + ridge, fused (probe)": fused}
        for name, vols in methods.items():
            m = [evaluate_ct(np.asarray(v, np.float32) * 1000, np.asarray(r, np.float32) * 1000)
                 for v, r in zip(vols, d["ref"])]
            rows.setdefault(name, []).append(np.mean([[q["psnr"], q["ssim"], q["mae_hu"]] for q in m], 0))
    print("\n| method | PSNR (dB) | SSIM | MAE (HU) |\n|---|---|---|---|")
    for name, per_set in rows.items():
        a = np.asarray(per_set)
        print(f"| {name} | {a[:, 0].mean():.2f} ± {a[:, 0].std():.2f} | {a[:, 1].mean():.3f} ± {a[:, 1].std():.3f} | "
              f"{a[:, 2].mean():.1f} ± {a[:, 2].std():.1f} |")
    gain = np.asarray(rows["stage 1 + ridge, fused (probe)"])[:, 0] - np.asarray(rows["ridge"])[:, 0]
    print(f"\nfused - ridge: {gain.mean():+.2f} ± {gain.std():.2f} dB (per test set: "
          f"{', '.join(f'{v:+.2f}' for v in gain)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
