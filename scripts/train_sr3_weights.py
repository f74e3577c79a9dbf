"""Train the shipped SR3 checkpoint: soil micro-CT, x8 in-plane (16 -> 128 pixels per side).

    python scripts/train_sr3_weights.py          # -> workbench/tasks/sr/weights/sr3_x8.pt

Training data, all generated here, nothing downloaded: simulated soil micro-CT volumes of
128^3 (``workbench sr simulate --seed 0 --n 24 --grain-radius 2 16``: median grain radii drawn
log-uniformly from fine silt to medium sand, 40-320 um at 20 um voxels; evaluation uses seeds
>= 10000), or with
``--chunk-size C`` in chunks of C (chunk k drawn with seed k) simulated in ``--jobs`` parallel
processes (the volumes depend on C, not on the number of processes), each with its own randomly
drawn in-plane degradation (PSF width, noise), the last eighth held out for validation. The model
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
from workbench.tasks.case_pool import run_cases  # noqa: E402
from workbench.tasks.sr import workflow  # noqa: E402
from workbench.tasks.sr.soil import TRAINING_GRAIN_RADII  # noqa: E402
from workbench.tasks.sr.sr3_predictor import default_sr3_checkpoint  # noqa: E402
from workbench.training.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from workbench.training.ema import model_weights  # noqa: E402
from workbench.training.schedules import cpu_model_name  # noqa: E402


def _simulate_chunk(args) -> None:
    folder, k, n, size, grain_radius = args
    workflow.simulate(folder, kind="soil", scale=8, inplane=True, n=n, size=size, seed=k, grain_radius=grain_radius)


def simulate_training_volumes(root: Path, n_soil: int, size: int, chunk: int = 0, jobs: int = 1,
                              grain_radius=None) -> list[Path]:
    """``n_soil`` volumes, in one folder (seed 0) or in chunks of ``chunk`` (chunk k drawn with seed k),
    ``jobs`` processes (the tasks' shared pool, :func:`workbench.tasks.case_pool.run_cases`)."""
    chunk = chunk or n_soil
    chunks = [(root / f"soil_{k:03d}", k, min(chunk, n_soil - k * chunk), size, grain_radius)
              for k in range(-(-n_soil // chunk))]
    run_cases(_simulate_chunk, chunks, total=len(chunks), workers=jobs)
    return [c[0] for c in chunks]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, help="default: the task's SR3 default config")
    ap.add_argument("--n-soil", type=int, default=24)
    ap.add_argument("--size", type=int, default=128, help="HR edge of the training volumes")
    ap.add_argument("--out", type=Path, default=None, help=f"default: {default_sr3_checkpoint()}")
    ap.add_argument("--run", type=Path, default=None, help="keep the full run (resumable) in this folder")
    ap.add_argument("--resume", action="store_true", help="continue the run in --run from its last.pt (exact)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None, help="default: the task's SR3 default config")
    ap.add_argument("--lr", type=float, default=None, help="peak learning rate; default: the SR3 default config")
    ap.add_argument("--checkpoint-every", type=int, default=None, help="steps between last.pt writes")
    ap.add_argument("--device", default=None, help="auto (default config), cpu or cuda")
    ap.add_argument("--grain-radius", type=float, nargs=2, metavar=("LO", "HI"), default=list(TRAINING_GRAIN_RADII),
                    help="median grain radius of each volume drawn log-uniformly in [LO, HI] voxels")
    ap.add_argument("--chunk-size", type=int, default=0, help="simulate in chunks of this many volumes (seed k)")
    ap.add_argument("--jobs", type=int, default=1, help="processes simulating the chunks")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out or default_sr3_checkpoint()
    config = get_task("sr").default_config(model="sr3")
    if args.steps:
        config.train.steps = args.steps
    if args.batch_size:
        config.data.batch_size = args.batch_size
    if args.lr:
        config.train.lr = args.lr
    if args.checkpoint_every:
        config.train.checkpoint_every = config.train.val_every = args.checkpoint_every
    if args.device:
        config.train.device = args.device
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        folders = simulate_training_volumes(tmp / "soil", args.n_soil, args.size, args.chunk_size, args.jobs,
                                            args.grain_radius)
        t_data = time.perf_counter() - t0
        if args.resume and args.run is None:
            ap.error("--resume needs --run (the folder holding last.pt)")
        result = workflow.train(folders, args.run or tmp / "run", config, resume=args.resume)
        t_train = time.perf_counter() - t0 - t_data
        ckpt = load_checkpoint(result.best_checkpoint or result.last_checkpoint)
    keep = {k: v for k, v in ckpt.items() if k not in ("optimizer_state", "scheduler_state", "scaler_state", "rng",
                                                         "sampler_generator_state", "rank_rng", "ema_state")}
    keep["model_state"] = {k: v.half() if v.is_floating_point() else v for k, v in model_weights(ckpt).items()}
    keep["task_meta"] = {**keep.get("task_meta", {}), "trained_by": reproducing_command(ap, args),
                         "train_seconds": round(t_train, 1), "cpu": cpu_model_name(), "weights": "EMA, float16",
                         "data": (f"{args.n_soil} soil volumes {args.size}^3 (" + (f"chunks of {args.chunk_size}, seeds 0.." if args.chunk_size else "seed 0") + ")" + (", grain radius {:g}-{:g} voxels (log-uniform)".format(*args.grain_radius) if args.grain_radius
                                       else "") + ", x8 in-plane"),
                         "device": str(result_device(config)), "batch_size": config.data.batch_size}
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out, keep)
    print(json.dumps({"checkpoint": str(out), "device": keep["task_meta"]["device"], "size_mb": round(out.stat().st_size / 2**20, 2),
                      "best_loss": result.best_loss, "steps": result.steps_done,
                      "train_seconds": round(t_train, 1), "data_seconds": round(t_data, 1)}))
    return 0


def reproducing_command(ap: argparse.ArgumentParser, args) -> str:
    """``python scripts/train_sr3_weights.py`` with the options that change what is trained."""
    out = ["python scripts/train_sr3_weights.py"]
    for key in ("steps", "n_soil", "size", "grain_radius", "chunk_size", "batch_size", "lr"):
        value = getattr(args, key)
        if value != ap.get_default(key):
            out.append(f"--{key.replace('_', '-')} " + (" ".join(f"{v:g}" for v in value) if isinstance(value, list)
                                                         else f"{value:g}" if isinstance(value, float) else str(value)))
    return " ".join(out)


def result_device(config) -> str:
    """The device a run of ``config`` trained on, as the trainer resolves it."""
    from workbench.training.distributed import resolve_device

    dev = resolve_device(config.train.device)
    return torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_model_name()


if __name__ == "__main__":
    sys.exit(main())
