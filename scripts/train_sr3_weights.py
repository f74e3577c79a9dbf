"""Train the shipped SR3 checkpoint: soil micro-CT, x8 in-plane (16 -> 128 pixels per side).

    python scripts/train_sr3_weights.py          # -> workbench/tasks/sr/weights/sr3_x8.pt

Training data, all generated here, nothing downloaded: simulated soil micro-CT volumes of
128^3 (seeds 0 .. n-1; evaluation uses seeds >= 10000), each with its own randomly drawn
in-plane degradation (PSF width, noise), the last one held out for validation. The model
trains on 2D slices (HR crops of 64^2) with the task's SR3 defaults
(`workbench config --task sr --model sr3`). The checkpoint keeps the EMA weights in
float16 (prediction casts them back to float32), the config and metadata, not the
optimizer state, so it stays a few MB; a resumable run is `workbench sr train --model sr3`.
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
from workbench.tasks.sr.sr3_predictor import default_sr3_checkpoint  # noqa: E402
from workbench.training.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from workbench.training.ema import model_weights  # noqa: E402
from workbench.training.schedules import cpu_model_name  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, help="default: the task's SR3 default config")
    ap.add_argument("--n-soil", type=int, default=12)
    ap.add_argument("--size", type=int, default=128, help="HR edge of the training volumes")
    ap.add_argument("--out", type=Path, default=None, help=f"default: {default_sr3_checkpoint()}")
    ap.add_argument("--run", type=Path, default=None, help="keep the full run (resumable) in this folder")
    ap.add_argument("--resume", action="store_true", help="continue the run in --run from its last.pt (exact)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out or default_sr3_checkpoint()
    config = get_task("sr").default_config(model="sr3")
    if args.steps:
        config.train.steps = args.steps
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        workflow.simulate(tmp / "soil", kind="soil", scale=8, inplane=True, n=args.n_soil, size=args.size, seed=0)
        t_data = time.perf_counter() - t0
        if args.resume and args.run is None:
            ap.error("--resume needs --run (the folder holding last.pt)")
        result = workflow.train([tmp / "soil"], args.run or tmp / "run", config, resume=args.resume)
        t_train = time.perf_counter() - t0 - t_data
        ckpt = load_checkpoint(result.best_checkpoint or result.last_checkpoint)
    keep = {k: v for k, v in ckpt.items() if k not in ("optimizer_state", "scheduler_state", "scaler_state", "rng",
                                                         "sampler_generator_state", "rank_rng", "ema_state")}
    keep["model_state"] = {k: v.half() if v.is_floating_point() else v for k, v in model_weights(ckpt).items()}
    keep["task_meta"] = {**keep.get("task_meta", {}), "trained_by": "python scripts/train_sr3_weights.py",
                         "train_seconds": round(t_train, 1), "cpu": cpu_model_name(), "weights": "EMA, float16",
                         "data": f"{args.n_soil} soil volumes {args.size}^3 (seeds 0..), x8 in-plane"}
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out, keep)
    print(json.dumps({"checkpoint": str(out), "size_mb": round(out.stat().st_size / 2**20, 2),
                      "best_loss": result.best_loss, "steps": result.steps_done,
                      "train_seconds": round(t_train, 1), "data_seconds": round(t_data, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
