"""DWI denoising at clinical size: seconds and peak resident memory per stage.

    python benchmarks/dwi_scale.py [--sizes 64x64x32 96x96x60 128x128x80] [--modes pretrained scratch]
                                   [--mppca-stride 2] [--mppca-lattice 4] [--steps 2000] [--threads 2]

Each (size, mode) runs in a fresh process (so its peak RSS is its own: the phantom is
simulated and written beforehand) on a multishell 65-volume phantom at SNR 10 (seed 0),
read from NIfTI as ``workbench denoise`` does, through the same calls as
:func:`workbench.api.denoise_series`:

- ``pretrained``: a checkpoint trained once on a 64x64x32 phantom of another seed (7; its
  training time is printed, not counted), then the priors, the network over every volume,
  the MP-PCA blend, post-processing and the write;
- ``scratch``: self-supervised training on the scan itself (``--steps``, default the config's), then the same.

A sampling thread reads the process's RSS every 20 ms; each stage's peak is the largest
reading while it ran. The CPU, its bfloat16 support and the thread settings head the
table; RMSE to the clean phantom (inside the brain) shows the output is the same job.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

STAGES = ["load + mask + sigma", "q-space priors", "training", "network", "MP-PCA blend", "post + estimate",
          "write"]


class StageClock:
    """Seconds and peak RSS per named stage (a background thread samples RSS every 20 ms)."""

    def __init__(self) -> None:
        import psutil

        self.proc = psutil.Process()
        self.stage, self.t0 = None, 0.0
        self.seconds: dict[str, float] = {}
        self.peak: dict[str, int] = {}
        self._stop = threading.Event()
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self._note()

    def _note(self) -> None:
        if self.stage is not None:
            self.peak[self.stage] = max(self.peak.get(self.stage, 0), self.proc.memory_info().rss)

    def enter(self, stage: str | None) -> None:
        now = time.perf_counter()
        self._note()
        if self.stage is not None:
            self.seconds[self.stage] = self.seconds.get(self.stage, 0.0) + now - self.t0
        self.stage, self.t0 = stage, now
        self._note()

    def close(self) -> None:
        self.enter(None)
        self._stop.set()


def make_checkpoint(path: Path, steps: int, stride: int | None, lattice: int | None = None) -> float:
    from workbench.api import make_trainer
    from workbench.config import Config
    from workbench.data.nifti import DWISeries
    from workbench.data.phantoms import simulate_dwi

    ph = simulate_dwi(shape=(64, 64, 32), scheme="multishell", snr=10.0, seed=7)
    cfg = configured(Config(), stride, lattice)
    cfg.train.steps = steps
    t0 = time.perf_counter()
    trainer = make_trainer([DWISeries(ph.noisy, ph.affine, None, ph.bvals, ph.bvecs)], str(path.parent), cfg,
                           masks=[ph.mask])
    result = trainer.fit()
    Path(result.best_checkpoint or result.last_checkpoint).replace(path)
    return time.perf_counter() - t0


def configured(cfg, stride: int | None, lattice: int | None = None):
    if stride:
        cfg.data.mppca_stride = cfg.inference.mppca_stride = stride
    if lattice:
        cfg.data.mppca_lattice = cfg.inference.mppca_lattice = lattice
    return cfg


def write_phantom(size: tuple[int, int, int], folder: Path) -> None:
    """The test phantom (multishell, SNR 10, seed 0) as NIfTI: dwi + bval/bvec, clean, brain mask."""
    import nibabel as nib

    from workbench.data.phantoms import simulate_dwi

    ph = simulate_dwi(shape=size, scheme="multishell", snr=10.0, seed=0)
    folder.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(ph.noisy, ph.affine), folder / "dwi.nii.gz")
    nib.save(nib.Nifti1Image(ph.clean, ph.affine), folder / "clean.nii.gz")
    nib.save(nib.Nifti1Image(ph.mask.astype(np.uint8), ph.affine), folder / "brain.nii.gz")
    np.savetxt(folder / "dwi.bval", ph.bvals[None], fmt="%g")
    np.savetxt(folder / "dwi.bvec", ph.bvecs.T, fmt="%.6f")


def one_run(data_dir: str, mode: str, checkpoint: str | None, steps: int, stride: int | None,
            lattice: int | None = None) -> dict:
    """One (size, mode) in this process: the stages of ``workbench denoise`` on ``data_dir``, timed."""
    import nibabel as nib

    from workbench.allocator import trim_heap
    from workbench.api import make_trainer, noise_sigma
    from workbench.config import Config
    from workbench.data.nifti import load_dwi, save_dwi
    from workbench.inference import Denoiser

    folder = Path(data_dir)
    src = folder / "dwi.nii.gz"
    brain = np.asarray(nib.load(folder / "brain.nii.gz").dataobj).astype(bool)
    noisy_rmse = rmse_to_clean(folder, load_dwi(src).data, brain)  # before the clock (the data are consumed)
    trim_heap()
    with tempfile.TemporaryDirectory(prefix="dwi-scale-") as tmp:
        clock = StageClock()
        clock.enter("load + mask + sigma")
        series = load_dwi(src)
        input_gb = series.data.astype(np.float32, copy=False).nbytes / 2**30
        # as `workbench denoise`: sigma first, then the series is normalised in place and worked on (consumed)
        if mode == "pretrained":  # as `workbench denoise --checkpoint`: the priors are prepared inside denoise()
            denoiser = Denoiser.from_checkpoint(checkpoint)
            configured(denoiser.config, None, lattice)
            sigma, _ = noise_sigma(series, None, denoiser.config)
            clock.enter("q-space priors")
            subject = None
        else:
            cfg = configured(Config(), stride, lattice)
            cfg.train.steps = steps or cfg.train.steps
            sigma, _ = noise_sigma(series, None, cfg)
            clock.enter("q-space priors")
            trainer = make_trainer([series], tmp, cfg, overwrite_input=True)
            clock.enter("training")
            result = trainer.fit()
            denoiser = Denoiser.from_checkpoint(result.best_checkpoint or result.last_checkpoint)
            subject = trainer.subjects[0]
            del trainer, result  # as denoise_series: training's model, optimizer and heap are let go
            gc.collect()
            trim_heap()
        n = series.n_volumes

        def prepare_progress(done: int, total: int) -> None:
            if done == total:
                clock.enter("network")

        def progress(done: int, total: int) -> None:
            if done == n:
                clock.enter("MP-PCA blend")
            if done == total:
                clock.enter("post + estimate")

        if subject is not None:
            clock.enter("network")
        out = denoiser.denoise(series.data, series.bvals, series.bvecs, progress=progress, sigma=sigma,
                               subject=subject, prepare_progress=prepare_progress, release_priors=True,
                               overwrite_input=True)
        clock.enter("write")
        save_dwi(Path(tmp) / "out.nii.gz", series, out.denoised)
        clock.close()
        import resource

        max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        rmse = rmse_to_clean(folder, out.denoised, brain)
        return {"size": "x".join(map(str, series.spatial_shape)), "mode": mode, "seconds": clock.seconds,
                "peak_gb": {k: v / 2**30 for k, v in clock.peak.items()},
                "max_rss_gb": max_rss,
                "input_gb": input_gb, "rmse": rmse, "noisy_rmse": noisy_rmse}


def rmse_to_clean(folder: Path, series: np.ndarray, brain: np.ndarray) -> float:
    """RMSE of a (X, Y, Z, N) series to the phantom's clean series inside the brain."""
    import nibabel as nib

    clean = np.asarray(nib.load(folder / "clean.nii.gz").dataobj, dtype=np.float32)[brain]
    return float(np.sqrt(np.mean((series[brain] - clean).astype(np.float64) ** 2)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["64x64x32", "96x96x60", "128x128x80"])
    parser.add_argument("--modes", nargs="+", default=["pretrained", "scratch"], choices=["pretrained", "scratch"])
    parser.add_argument("--steps", type=int, default=None,
                        help="training steps (checkpoint and scratch; default: the config's, the task's default)")
    parser.add_argument("--mppca-stride", type=int, default=None, help="default: the config's")
    parser.add_argument("--mppca-lattice", type=int, default=None, choices=(1, 2, 4),
                        help="patch centres of MP-PCA in the brain (prior and blend; default: the config's)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: every core)")
    parser.add_argument("--checkpoint", default=None, help="a pretrained checkpoint to use (default: train one)")
    parser.add_argument("--one", nargs=3, metavar=("DATA_DIR", "MODE", "CHECKPOINT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(one_run(args.one[0], args.one[1], args.one[2], args.steps, args.mppca_stride,
                                 args.mppca_lattice)))
        return 0

    from workbench.config import Config
    from workbench.training.schedules import cpu_has_native_bf16, cpu_model_name

    stride = args.mppca_stride or Config().inference.mppca_stride
    steps = args.steps or Config().train.steps
    lattice = args.mppca_lattice or Config().inference.mppca_lattice
    print(f"# DWI at scale: {cpu_model_name()}, {os.cpu_count()} cores, native bfloat16 {cpu_has_native_bf16()}, "
          f"torch {torch.__version__} with {torch.get_num_threads()} threads, OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', 'unset')}, MP-PCA stride {stride}, lattice {lattice}, {steps} training steps\n",
          flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="dwi-scale-ckpt-") as tmp:
        ckpt = Path(args.checkpoint or Path(tmp) / "pretrained.pt")
        if "pretrained" in args.modes and not args.checkpoint:
            print(f"(checkpoint trained on 64x64x32x65, seed 7: {make_checkpoint(ckpt, steps, args.mppca_stride, args.mppca_lattice):.0f} s, "
                  "not counted below)\n", flush=True)
        for size in args.sizes:
            folder = Path(tmp) / size
            write_phantom(tuple(int(v) for v in size.split("x")), folder)
            for mode in args.modes:
                cmd = [sys.executable, __file__, "--one", str(folder), mode, str(ckpt), "--steps", str(steps)]
                if args.mppca_stride:
                    cmd += ["--mppca-stride", str(args.mppca_stride)]
                if args.mppca_lattice:
                    cmd += ["--mppca-lattice", str(args.mppca_lattice)]
                if args.threads:
                    cmd += ["--threads", str(args.threads)]
                done = subprocess.run(cmd, capture_output=True, text=True)
                if done.returncode:
                    print(f"{size} {mode} failed:\n{done.stderr[-2000:]}", file=sys.stderr)
                    continue
                row = json.loads(done.stdout.strip().splitlines()[-1])
                rows.append(row)
                total = sum(row["seconds"].values())
                print(f"  {size} {mode}: {total:.0f} s, peak {row['max_rss_gb']:.2f} GB", file=sys.stderr, flush=True)
    stages = [s for s in STAGES if any(s in r["seconds"] for r in rows)]
    head = ["size x 65", "mode"] + stages + ["total", "peak RSS GB (stage)", "input GB", "RMSE (noisy)"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        cells = [r["size"], r["mode"]]
        for s in stages:
            cells.append(f"{r['seconds'][s]:.0f} s / {r['peak_gb'][s]:.2f}" if s in r["seconds"] else "-")
        worst = max(r["peak_gb"], key=r["peak_gb"].get)
        cells += [f"{sum(r['seconds'].values()) / 60:.1f} min", f"{r['max_rss_gb']:.2f} ({worst})",
                  f"{r['input_gb']:.2f}", f"{r['rmse']:.1f} ({r['noisy_rmse']:.1f})"]
        print("| " + " | ".join(cells) + " |")
    print("\nstage cells: seconds / peak RSS in GB while it ran")
    return 0


if __name__ == "__main__":
    sys.exit(main())
