"""Train the shipped default DOT checkpoint (the built-in geometry, grid 32).

    python scripts/train_dot_weights.py --data dot_bench/train     # -> workbench/tasks/dot/weights/dot_net.pt
    python scripts/train_dot_weights.py --from-run RUN/best.pt     # only strip a finished run into the package

Training data, all generated here, nothing downloaded: ``--n`` phantoms of
``workbench dot simulate`` with seed 1 (the benchmark's held-out test phantoms use seed 2).
Settings: the task's default config (seed 002: AdamW (0.9, 0.95), OneCycleLR to 3e-3 with
20% warm-up, RMSE 0.7 + SSIM 0.3 per channel weighted mu_a 3 : mu_s' 1, inclusions x41 in mu_s', early stopping,
spatial attention; the three linear Tikhonov reconstructions as extra input), seed 0, 800
steps: the benchmark's ``att_seed0`` run (``benchmarks/dot.py``
trains the same configuration with seeds 0, 1, 2, with and without attention), so
``--from-run dot_bench/runs/att_seed0/best.pt`` packages the network its table scores. The file keeps the weights (float16), config and
metadata, not the optimizer state (a few MB).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from workbench.tasks import get_task  # noqa: E402
from workbench.tasks.dot import workflow  # noqa: E402
from workbench.training.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from workbench.training.schedules import cpu_model_name  # noqa: E402

DROP = ("optimizer_state", "scheduler_state", "scaler_state", "rng", "sampler_generator_state", "ema_state")


def package(best: Path, out: Path, extra: dict) -> dict:
    ckpt = load_checkpoint(best)
    keep = {k: v for k, v in ckpt.items() if k not in DROP}
    keep["model_state"] = {k: (v.half() if v.is_floating_point() else v) for k, v in keep["model_state"].items()}
    keep["task_meta"] = {**keep.get("task_meta", {}), "train_cases": len(keep["task_meta"].get("train_cases", [])),
                         "val_cases": len(keep["task_meta"].get("val_cases", [])), **extra}
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out, keep)
    return {"checkpoint": str(out), "size_mb": round(out.stat().st_size / 2 ** 20, 2)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("dot_bench/train"), help="training cases (made if missing)")
    ap.add_argument("--n", type=int, default=800)
    ap.add_argument("--steps", type=int, default=None, help="default: the task's default config (800)")
    ap.add_argument("--run", type=Path, default=Path("dot_bench/runs/shipped"))
    ap.add_argument("--from-run", type=Path, help="a finished run's best.pt: package it, do not train")
    ap.add_argument("--out", type=Path, default=workflow.DEFAULT_CHECKPOINT)
    args = ap.parse_args(argv)
    extra = {"trained_by": "python scripts/train_dot_weights.py", "cpu": cpu_model_name(),
             "data": f"{args.n} simulated phantoms (seed 1), grid 32"}
    if args.from_run:
        print(json.dumps(package(args.from_run, args.out, extra)))
        return 0
    t0 = time.perf_counter()
    workflow.simulate(args.data, n=args.n, grid=32, seed=1, workers=os.cpu_count())
    config = get_task("dot").default_config()
    config.train.seed = 0
    if args.steps:
        config.train.steps = args.steps
    t1 = time.perf_counter()
    result = workflow.train(args.data, args.run, config)
    extra.update(data_seconds=round(t1 - t0, 1), train_seconds=round(time.perf_counter() - t1, 1))
    info = package(Path(result.best_checkpoint or result.last_checkpoint), args.out, extra)
    print(json.dumps({**info, "best_loss": result.best_loss, "steps": result.steps_done}))
    return 0


if __name__ == "__main__":
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    sys.exit(main())
