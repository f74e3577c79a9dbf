"""Training step time with and without mixed precision, per model, through the real trainer.

    python benchmarks/train_speed.py [--steps 30] [--models multiscale denoiser ...] [--profile] [--norm] [--compile]

Prints one table: seconds per optimizer step (median after warm-up) for float32
and for AMP (bfloat16 autocast on CPU), and their ratio, at the default data
settings on the 64x64x32x65 phantom. Ratios are measured in one run, back to back.
The CPU model and whether it computes bfloat16 natively head the output.

``--compile`` adds a column: AMP with ``train.compile`` (inductor), median after the compilation
(the first step; run it twice to see the timing without compilation, which inductor caches on disk).

``--profile`` adds, per model, where a step's time goes (torch.profiler, self CPU time per
operator, float32 vs AMP); ``--norm`` times GroupNorm forward + backward on one 4 x 24 x 32^3
activation in both memory layouts and both dtypes (why ``GroupNorm32`` normalises in the
contiguous layout under autocast).
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
from workbench.models import model_summary
from workbench.tasks.dwi.task import TASK as DWI_TASK
from workbench.training.events import StepEnd
from workbench.training.schedules import cpu_has_native_bf16, cpu_model_name


def step_times(series, config: Config) -> list[float]:
    stamps: list[float] = []

    def on_event(event):
        if isinstance(event, StepEnd):
            stamps.append(time.perf_counter())

    trainer = make_trainer([series], None, config, callbacks=[on_event])
    trainer.fit()
    return [b - a for a, b in zip(stamps, stamps[1:])]


def norm_table(repeats: int = 15) -> None:
    """GroupNorm forward + backward, ms, per memory layout and dtype (median of ``repeats``)."""
    import torch.nn.functional as F

    print("\n| GroupNorm 4 x 24 x 32^3, 8 groups | float32 ms | bfloat16 ms |")
    print("|---|---|---|")
    for label, fmt in (("contiguous", torch.contiguous_format), ("channels_last_3d", torch.channels_last_3d)):
        cells = []
        for dtype in (torch.float32, torch.bfloat16):
            x = torch.randn(4, 24, 32, 32, 32, dtype=dtype).contiguous(memory_format=fmt).requires_grad_()
            w = torch.ones(24, dtype=dtype, requires_grad=True)
            b = torch.zeros(24, dtype=dtype, requires_grad=True)
            g = torch.randn(4, 24, 32, 32, 32, dtype=dtype).contiguous(memory_format=fmt)
            times = []
            for _ in range(repeats + 2):
                t0 = time.perf_counter()
                F.group_norm(x, 8, w, b).backward(g)
                times.append(time.perf_counter() - t0)
            cells.append(f"{1e3 * statistics.median(times[2:]):.2f}")
        print(f"| {label} | {cells[0]} | {cells[1]} |", flush=True)


def profile_model(name: str, steps: int = 3, rows: int = 12) -> None:
    """Self CPU time per operator over ``steps`` training steps of ``name`` (batch 4 x 67 x 32^3), float32 vs AMP."""
    from torch.profiler import ProfilerActivity, profile

    from workbench.models import build_model

    torch.manual_seed(0)
    model = build_model(Config().model.model_copy(update={"name": name}), in_channels=67, num_conditions=65,
                        residual_channel=0)
    x, cond, target = torch.randn(4, 67, 32, 32, 32), torch.randint(0, 65, (4,)), torch.randn(4, 1, 32, 32, 32)
    opt = torch.optim.AdamW(model.parameters(), 1e-4)
    tables = {}
    for amp in (False, True):
        def step():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                loss = ((model(x, cond).float() - target) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()

        for _ in range(2):
            step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                step()
        tables[amp] = {e.key: e.self_cpu_time_total / 1e3 / steps for e in prof.key_averages()}
    top = sorted(tables[True], key=lambda k: -tables[True][k])[:rows]
    print(f"\n{name}: self CPU ms per step, top operators under AMP\n")
    print("| operator | float32 ms | AMP ms |")
    print("|---|---|---|")
    for key in top:
        print(f"| {key} | {tables[False].get(key, 0.0):.1f} | {tables[True][key]:.1f} |")
    print(f"| all | {sum(tables[False].values()):.1f} | {sum(tables[True].values()):.1f} |", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--models", nargs="+", default=sorted(DWI_TASK.models), choices=sorted(DWI_TASK.models),
                        help="the DWI task's models (the other tasks' networks take other inputs)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--profile", action="store_true", help="also print where a step's time goes, per model")
    parser.add_argument("--norm", action="store_true", help="also time GroupNorm per memory layout and dtype")
    parser.add_argument("--compile", action="store_true", help="also time AMP steps with train.compile")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"# CPU {cpu_model_name()}, native bfloat16 (AVX512-BF16/AMX): {cpu_has_native_bf16()}")
    p = simulate_dwi(shape=(64, 64, 32), scheme="multishell", snr=10, seed=0)
    series = DWISeries(p.noisy, p.affine, None, p.bvals, p.bvecs)
    base = Config()
    print(f"# step time, batch {base.data.batch_size} x {base.data.patch_size}^3 patches, 65 volumes, "
          f"{args.threads} threads, torch {torch.__version__}\n")
    extra = " AMP compiled s/step | float32 / AMP compiled |" if args.compile else ""
    print("| model | params | float32 s/step | AMP s/step | float32 / AMP |" + extra)
    print("|---|---|---|---|---|" + "---|---|" * bool(extra))
    for name in args.models:
        row = {}
        for amp, compiled in ((False, False), (True, False)) + (((True, True),) if args.compile else ()):
            cfg = base.model_copy(deep=True)
            cfg.model.name = name
            cfg.train.steps = args.steps
            cfg.train.val_every = 10 * args.steps
            cfg.train.amp = amp
            cfg.train.compile = compiled
            times = step_times(series, cfg)[3:]  # skip warm-up (and compilation)
            row[amp if not compiled else "compiled"] = statistics.median(times)
        from workbench.models import build_model

        n_params = model_summary(build_model(base.model.model_copy(update={"name": name}), in_channels=67,
                                             num_conditions=65))["parameters"]
        cells = f" {row['compiled']:.3f} | {row[False] / row['compiled']:.2f} |" if args.compile else ""
        print(f"| {name} | {n_params:,} | {row[False]:.3f} | {row[True]:.3f} | {row[False] / row[True]:.2f} |" + cells,
              flush=True)
    if args.norm:
        norm_table()
    if args.profile:
        for name in args.models:
            profile_model(name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
