"""Training step time with and without mixed precision, per model, through the real trainer.

    python benchmarks/train_speed.py [--steps 30] [--models multiscale denoiser ...]

Prints one table: seconds per optimizer step (median after warm-up) for float32
and for AMP (bfloat16 autocast on CPU), and their ratio, at the default data
settings on the 64x64x32x65 phantom. Ratios are measured in one run, back to back.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from workbench.api import make_trainer
from workbench.config import Config
from workbench.data.nifti import DWISeries
from workbench.data.phantoms import simulate_dwi
from workbench.models import MODELS, model_summary
from workbench.training.events import StepEnd


def step_times(series, config: Config) -> list[float]:
    stamps: list[float] = []

    def on_event(event):
        if isinstance(event, StepEnd):
            stamps.append(time.perf_counter())

    trainer = make_trainer([series], None, config, callbacks=[on_event])
    trainer.fit()
    return [b - a for a, b in zip(stamps, stamps[1:])]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--models", nargs="+", default=sorted(MODELS))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    p = simulate_dwi(shape=(64, 64, 32), scheme="multishell", snr=10, seed=0)
    series = DWISeries(p.noisy, p.affine, None, p.bvals, p.bvecs)
    base = Config()
    print(f"# step time, batch {base.data.batch_size} x {base.data.patch_size}^3 patches, 65 volumes, "
          f"{args.threads} threads, torch {torch.__version__}\n")
    print("| model | params | float32 s/step | AMP s/step | float32 / AMP |")
    print("|---|---|---|---|---|")
    for name in args.models:
        row = {}
        for amp in (False, True):
            cfg = base.model_copy(deep=True)
            cfg.model.name = name
            cfg.train.steps = args.steps
            cfg.train.val_every = 10 * args.steps
            cfg.train.amp = amp
            times = step_times(series, cfg)[3:]  # skip warm-up
            row[amp] = statistics.median(times)
        from workbench.models import build_model

        n_params = model_summary(build_model(base.model.model_copy(update={"name": name}), in_channels=67,
                                             num_conditions=65))["parameters"]
        print(f"| {name} | {n_params:,} | {row[False]:.3f} | {row[True]:.3f} | {row[False] / row[True]:.2f} |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
