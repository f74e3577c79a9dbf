"""Training the three things the task fits: stage 1, stage 2 (the sr network on stage-1 outputs), the linear model.

Stage 2 is the ``sr`` task's refinement network (``rrdb_sr``, PixelShuffle x2) trained
through the ``sr`` task's own trainer on pairs (stage-1 output at 64^3, reference at
128^3), so it learns to fix stage 1's errors; ``--from-truth`` trains it on the
average-pooled reference instead (what pure super-resolution would learn).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from workbench.io_utils import InputError, atomic_write_text
from workbench.tasks.xray2ct.data import VIEW_FILES, load_dataset, load_views, read_geometry, save_picture

PathLike = str | os.PathLike


def write_pngs(case: PathLike) -> list[Path]:
    """16-bit PNGs of a case's two views (display convention of :func:`~.data.load_xray`)."""
    case = Path(case)
    xr = load_views(case / VIEW_FILES["ap"], case / VIEW_FILES["lateral"])
    return [save_picture(case / "xray_ap.png", xr[0]), save_picture(case / "xray_lat.png", xr[1])]


def stage2_pairs(data_dir: PathLike, *, stage1: Optional[PathLike] = None, from_truth: bool = False,
                 progress=None) -> list:
    """SR pairs (input at the stage-1 grid, reference ``ct_hr``) of every case with a fine reference."""
    from workbench.data.nifti import load_volume
    from workbench.tasks.sr.data import SRPair
    from workbench.tasks.xray2ct.workflow import XrayPredictor

    cases = sorted(d for d in Path(data_dir).glob("case_*") if (d / "ct_hr.nii.gz").is_file())
    if not cases:
        raise InputError(f"{data_dir} has no case with ct_hr.nii.gz: simulate with --hr-size 128 (the default)")
    predictor = None if from_truth else XrayPredictor.from_checkpoint(stage1)
    pairs = []
    for k, case in enumerate(cases):
        hr, _, _ = load_volume(case / "ct_hr.nii.gz", "fine reference")
        if from_truth:
            lr, _, _ = load_volume(case / "ct.nii.gz", "CT")
        else:
            xr = load_views(case / VIEW_FILES["ap"], case / VIEW_FILES["lateral"])
            predictor.check(xr, read_geometry(case / "geometry.json"))
            lr = predictor.predict(xr)
        if tuple(2 * s for s in lr.shape) != hr.shape:
            raise InputError(f"{case}: ct_hr.nii.gz {hr.shape} is not twice the stage-1 grid {lr.shape}")
        pairs.append(SRPair.from_arrays(np.asarray(lr, np.float32), np.asarray(hr, np.float32), (2, 2, 2), case.name))
        if progress:
            progress(k + 1, len(cases))
    return pairs


def stage2_config(config_path: Optional[PathLike] = None):
    """The sr task's x2 config with seed 003's stage-2 loss (L1 1 + edge 0.1; + perceptual with user weights),
    400 steps (a CPU budget: the refinement starts as exact tricubic and learns a residual)."""
    from workbench.config import load_config
    from workbench.tasks import get_task

    if config_path:
        config = load_config(config_path)
        if config.task != "sr":
            raise InputError(f"{config_path}: stage 2 trains the sr network; write its config with "
                             "`workbench config --task sr` (scale 2)")
        return config
    config = get_task("sr").default_config(scale=2)
    config.loss.weights = {"l1": 1.0, "edge": 0.1}
    config.train.steps, config.train.val_every, config.train.checkpoint_every = 400, 100, 100
    return config


def train_stage2(data_dir: PathLike, out_dir: PathLike, *, config_path=None, steps: Optional[int] = None,
                 stage1: Optional[PathLike] = None, from_truth: bool = False, resume: bool = False,
                 callbacks: Iterable = (), progress=None):
    from workbench.tasks.sr.workflow import make_trainer

    config = stage2_config(config_path)
    if steps is not None:
        config.train.steps = int(steps)
    pairs = stage2_pairs(data_dir, stage1=stage1, from_truth=from_truth, progress=progress)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(out_dir) / "stage2.json", json.dumps(
        {"inputs": "downsampled reference" if from_truth else f"stage-1 outputs of {stage1 or 'the shipped stage 1'}",
         "data": str(data_dir), "cases": [p.name for p in pairs]}, indent=2))
    return make_trainer(pairs, out_dir, config, callbacks=callbacks).fit(resume=resume)


def train_fusion(data_dir: PathLike, out_dir: PathLike, *, config_path=None, steps: Optional[int] = None,
                 stage1: Optional[PathLike] = None, linear: Optional[PathLike] = None, resume: bool = False,
                 callbacks: Iterable = (), progress=None):
    """The fusion of stage 1 with ridge, on cases of ``data_dir`` that neither was fitted on."""
    from workbench.config import load_config
    from workbench.tasks.xray2ct.fusion import fusion_config, make_fusion_trainer

    if resume and not (Path(out_dir) / "last.pt").is_file():
        raise InputError(f"--resume: {out_dir}/last.pt does not exist: drop --resume to start a new run")
    config = load_config(config_path) if config_path else fusion_config()
    if config.task != "xray2ct":
        raise InputError(f"{config_path} is a config for task '{config.task}'; start from `workbench config --task "
                         "xray2ct --model estimate_fusion`")
    if steps is not None:
        config.train.steps = int(steps)
    trainer = make_fusion_trainer(load_dataset(data_dir), out_dir, config, stage1=stage1, linear=linear,
                                  callbacks=callbacks, progress=progress)
    return trainer.fit(resume=resume)


def fit_linear_model(data_dir: PathLike, out_dir: PathLike, *, seed: int = 0, real_ct_volumes: int = 24,
                     k: int = 64, basis_grid: int = 32) -> Path:
    """The atlas and ridge model fitted on the stage-1 training split of ``data_dir`` (+ the same real-CT crops)."""
    import torch

    from workbench.tasks.xray2ct.baselines import fit_linear
    from workbench.tasks.xray2ct.geometry import add_photon_noise, project_hu
    from workbench.tasks.xray2ct.workflow import split

    ds = load_dataset(data_dir)
    train_idx, _ = split(len(ds), seed)
    vols = [ds.hu[i].astype(np.float32) for i in train_idx]
    if real_ct_volumes:
        from workbench.tasks.xray2ct.real_ct import chest_training_volumes

        vols += chest_training_volumes(real_ct_volumes, ds.geometry, np.random.default_rng(seed + 7))
    gen = torch.Generator().manual_seed(seed)
    xrays = np.stack([add_photon_noise(torch.from_numpy(project_hu(v, ds.geometry)), ds.geometry.photons,
                                       gen).numpy() for v in vols])
    model = fit_linear(vols, xrays, ds.geometry, k=k, basis_grid=basis_grid)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return model.save(Path(out_dir) / "linear.npz")


def train_stage(args, progress) -> str:
    """``workbench xray2ct train``: the stage the arguments name; returns the line the CLI prints."""
    from workbench.tasks.xray2ct import workflow

    if args.stage == "linear":
        path = fit_linear_model(args.data_dir, args.out)
        return f"wrote {path} (atlas + ridge regression)"
    if args.linear and args.stage != "fusion":
        raise InputError("--linear is an option of --stage fusion")
    if args.stage == "fusion":
        if args.from_truth:
            raise InputError("--from-truth is an option of --stage 2")
        result = train_fusion(args.data_dir, args.out, config_path=args.config, steps=args.steps, stage1=args.stage1,
                              linear=args.linear, resume=args.resume, callbacks=[progress.on_event],
                              progress=progress.stage("stage 1 and ridge", "case").inference)
        return (f"fusion: {result.steps_done} steps ({result.reason}); best held-out loss {result.best_loss:.5g}; "
                f"checkpoints in {args.out}")
    if args.stage == "2":
        if args.resume and not (Path(args.out) / "last.pt").is_file():
            raise InputError(f"--resume: {args.out}/last.pt does not exist: drop --resume to start a new run")
        result = train_stage2(args.data_dir, args.out, config_path=args.config, steps=args.steps, stage1=args.stage1,
                              from_truth=args.from_truth, resume=args.resume, callbacks=[progress.on_event],
                              progress=progress.stage("stage-1 outputs", "case").inference)
    else:
        if args.stage1 or args.from_truth:
            raise InputError("--stage1 is an option of --stage 2 and fusion, --from-truth of --stage 2")
        config = workflow.resolve_config(args.config)
        if args.steps is not None:
            config.train.steps = int(args.steps)
        result = workflow.train(args.data_dir, args.out, config, resume=args.resume, callbacks=[progress.on_event])
    return (f"stage {args.stage}: {result.steps_done} steps ({result.reason}); best held-out loss "
            f"{result.best_loss:.5g}; checkpoints in {args.out}")
