"""What every front end calls for CT from biplanar X-rays: simulate, project, train, predict, baseline, evaluate.

Volumes are (X, Y, Z) float32 HU arrays in the core and NIfTI files with the geometry's
LAS mm affine on disk; X-rays are (2, nu, nv) line integrals (AP, lateral). Stage 1
(:class:`XrayPredictor`) gives the 64^3 volume; stage 2 is the ``sr`` task's refinement
network (``rrdb_sr``, x2) applied to it.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
import torch

from workbench.io_utils import InputError, atomic_write_text
from workbench.tasks.xray2ct.data import (VIEW_FILES, XrayDataset, geometry_beside, hu_to_unit, load_dataset,
                                          load_views, unit_to_hu, write_case)
from workbench.tasks.xray2ct.geometry import LINE_INTEGRAL_SCALE, XrayGeometry, default_geometry

PathLike = str | os.PathLike
WEIGHTS_DIR = Path(__file__).with_name("weights")
DEFAULT_STAGE1 = WEIGHTS_DIR / "xray2ct_stage1.pt"
DEFAULT_STAGE2 = WEIGHTS_DIR / "xray2ct_stage2.pt"
DEFAULT_LINEAR = WEIGHTS_DIR / "xray2ct_linear.npz"
DEFAULT_FUSION = WEIGHTS_DIR / "xray2ct_fusion.pt"


def _task():
    from workbench.tasks import get_task

    return get_task("xray2ct")


def geometry_for(config) -> XrayGeometry:
    opts = _task().options(config)
    return default_geometry(opts.size, opts.geometry)


# --------------------------------------------------------------------------- simulate, project
def simulate(out_dir: PathLike, *, n: int = 8, size: int = 64, seed: int = 0, geometry: str = "parallel",
             hr_size: Optional[int] = None, workers: Optional[int] = None, progress=None, should_stop=None):
    """``n`` torso phantoms with their two X-rays (and the 2x finer reference for stage 2; ``hr_size=0``: none)."""
    from workbench.tasks.xray2ct.data import simulate_dataset

    if n < 1:
        raise InputError(f"--n must be >= 1, got {n}")
    if size not in (32, 64, 128):
        raise InputError(f"--size {size} is not supported: use 64 (default), 32 or 128")
    hr = 2 * size if hr_size is None else int(hr_size)
    if hr and hr % size:
        raise InputError(f"the reference size {hr} must be a multiple of --size {size}")
    return simulate_dataset(out_dir, n, geometry=default_geometry(size, geometry), seed=seed, hr_size=hr,
                            workers=workers, progress=progress, should_stop=should_stop)


def project_file(ct_path: PathLike, case_dir: PathLike, *, geometry: str = "parallel", seed: int = 0) -> Path:
    """The two X-rays of any CT volume (HU): resampled onto the built-in field, projected, written as a case."""
    from workbench.data.nifti import load_volume
    from workbench.tasks.xray2ct.real_ct import resample_to_field

    hu, affine, _ = load_volume(ct_path, "CT volume")
    if hu.ndim != 3:
        raise InputError(f"CT volume {ct_path} has shape {hu.shape}: give one 3D volume in HU")
    if not np.isfinite(hu).all():
        raise InputError(f"CT volume {ct_path} contains NaN or infinite values: fill them (e.g. with -1000 HU)")
    case_dir = Path(case_dir)
    if case_dir.resolve() == Path(ct_path).resolve().parent and (case_dir / "ct.nii.gz").resolve() == \
            Path(ct_path).resolve():
        raise InputError(f"{case_dir} would overwrite the input {ct_path}: write the case to another folder")
    g = default_geometry(64, geometry)
    vol = resample_to_field(hu, affine, g)
    return write_case(case_dir, vol, g, seed=seed, extra={"source": str(ct_path)})


# --------------------------------------------------------------------------- training
def split(n: int, seed: int, val_fraction: float = 0.1) -> tuple[list[int], list[int]]:
    order = np.random.default_rng(seed).permutation(n).tolist()
    n_val = max(1, int(round(n * val_fraction))) if n > 1 else 0
    return sorted(order[n_val:]) or order, sorted(order[:n_val]) or order


def make_trainer(dataset: XrayDataset, out_dir: Optional[PathLike], config, *, callbacks: Iterable = (),
                 loss_weights=None):
    """A stage-1 trainer: a seeded tenth of the cases held out for validation; real-CT crops join the training part."""
    from workbench.models import build_model
    from workbench.tasks.xray2ct.geometry import detector_coordinates
    from workbench.tasks.xray2ct.training import XraySampler, make_step
    from workbench.training.trainer import Trainer

    g = dataset.geometry
    opts = _task().options(config)
    if opts.size != g.size or opts.geometry != g.kind:        # the data decide (recorded in the run's config)
        config.options = {**config.options, "size": g.size, "geometry": g.kind}
    train_idx, val_idx = split(len(dataset), config.train.seed)
    volumes = list(dataset.hu)
    n_real = int(opts.real_ct_volumes)
    if n_real:
        from workbench.tasks.xray2ct.real_ct import chest_training_volumes

        real = chest_training_volumes(n_real, g, np.random.default_rng(config.train.seed + 7))
        train_idx = train_idx + list(range(len(volumes), len(volumes) + n_real))
        volumes += real
    sampler = XraySampler(volumes, train_idx, val_idx, g, augment=config.data.augment,
                          photon_range=opts.photon_range)
    torch.manual_seed(config.train.seed)
    mean_unit = float(np.mean([hu_to_unit(dataset.hu[i].astype(np.float32)).mean() for i in train_idx
                               if i < len(dataset)]))
    spec = {"in_channels": len(g.views), "out_channels": 1, "output_grid": g.size, "out_bias": round(mean_unit, 4)}
    model = build_model(config.model, **spec)
    model.set_geometry([[detector_coordinates(g, v, grid) for v in g.views] for grid in model.grids])
    meta = {"name": config.model.name, **spec}
    names = dataset.names
    task_meta = {"task": "xray2ct", "stage": 1, "geometry": g.to_dict(), "real_ct_volumes": n_real,
                 "data_seed": dataset.seed,
                 "train_cases": [names[i] for i in train_idx if i < len(names)],
                 "val_cases": [names[i] for i in val_idx]}
    terms = None
    if opts.perceptual_weights:
        from workbench.perceptual import PerceptualLoss

        terms = {"perceptual": PerceptualLoss(opts.perceptual_weights)}
    elif config.loss.weights.get("perceptual", 0) > 0:
        from workbench.perceptual import UNAVAILABLE

        raise InputError(f"loss.weights.perceptual is {config.loss.weights['perceptual']:g} but the term {UNAVAILABLE}")
    return Trainer(model, sampler, config, out_dir=out_dir, callbacks=tuple(callbacks), loss_weights=loss_weights,
                   model_meta=meta, task_meta=task_meta, step=make_step(g), loss_terms=terms)


def resolve_config(path: Optional[PathLike]):
    from workbench.config import load_config

    if path is None:
        return _task().default_config()
    config = load_config(path)
    if config.task != "xray2ct":
        raise InputError(f"{path} is a config for task '{config.task}'; start from `workbench config --task xray2ct`")
    return config


def train(data_dir: PathLike, out_dir: PathLike, config, *, resume: bool = False, callbacks: Iterable = ()):
    """Stage 1 on the simulated cases of ``data_dir``; checkpoints, config.yaml and metrics.csv in ``out_dir``."""
    if resume and not (Path(out_dir) / "last.pt").is_file():
        raise InputError(f"--resume: {out_dir}/last.pt does not exist: drop --resume to start a new run")
    return make_trainer(load_dataset(data_dir), out_dir, config, callbacks=callbacks).fit(resume=resume)


# --------------------------------------------------------------------------- prediction
class XrayPredictor:
    """A stage-1 network with its geometry, and the fusion with the ridge model when one is attached.

    ``predict`` returns the fused volume when :attr:`fusion` is set
    (:class:`~workbench.tasks.xray2ct.fusion.StageOneFusion`), else the network's own.
    """

    def __init__(self, model: torch.nn.Module, geometry: XrayGeometry, source: str, *, fusion=None,
                 train_cases: Iterable[str] = (), data_seed: Optional[int] = None):
        self.model, self.geometry, self.source, self.fusion = model.eval(), geometry, source, fusion
        self.train_cases, self.data_seed = list(train_cases), data_seed

    @classmethod
    def from_checkpoint(cls, path: Optional[PathLike] = None, *, fusion: Optional[PathLike | bool] = None,
                        linear: Optional[PathLike] = None) -> "XrayPredictor":
        """Open a stage-1 checkpoint (default: the shipped one) and its fusion.

        ``fusion``: None attaches the shipped fusion to the shipped stage 1 (and nothing to
        other checkpoints); False attaches none; a path attaches that fusion checkpoint,
        which must have been trained behind this stage 1 and ``linear`` (default: the
        shipped linear model).
        """
        from workbench.config import Config
        from workbench.models import build_model
        from workbench.tasks.xray2ct.geometry import detector_coordinates
        from workbench.training.checkpoint import load_checkpoint
        from workbench.training.ema import model_weights

        if not path and not DEFAULT_STAGE1.is_file():
            raise InputError(f"the shipped checkpoint {DEFAULT_STAGE1} is missing from this install: reinstall the "
                             "package, or pass --checkpoint (a best.pt of `workbench xray2ct train`)")
        path = Path(path) if path else DEFAULT_STAGE1
        if not path.is_file():
            raise InputError(f"checkpoint {path} not found: pass a best.pt of `workbench xray2ct train`, or omit "
                             "--checkpoint for the shipped one")
        ckpt = load_checkpoint(path)
        task = ckpt.get("task_meta") or {}
        if task.get("task") != "xray2ct":
            raise InputError(f"checkpoint {path} is for task '{task.get('task', 'dwi')}', not xray2ct stage 1: pick "
                             "a best.pt of `workbench xray2ct train --stage 1`")
        if task.get("stage", 1) != 1:
            raise InputError(f"checkpoint {path} is the xray2ct {task['stage']} stage, not stage 1: pass it with "
                             f"--{'fusion' if task['stage'] == 'fusion' else 'refine'}, and a stage-1 best.pt (or "
                             "none) with --checkpoint")
        config = Config.model_validate(ckpt["config"])
        meta = ckpt["model_meta"]
        model = build_model(config.model, **{k: meta[k] for k in ("in_channels", "out_channels", "output_grid",
                                                                  "out_bias")})
        # lift* buffers: the geometry's detector coordinates, rebuilt below (older checkpoints stored them)
        model.load_state_dict({k: v.float() for k, v in model_weights(ckpt).items() if not k.startswith("lift")})
        g = XrayGeometry.from_dict(task["geometry"])
        model.set_geometry([[detector_coordinates(g, v, grid) for v in g.views] for grid in model.grids])
        cases = task.get("train_cases")      # names; a count in the shipped (packaged) checkpoint
        predictor = cls(model, g, str(path), train_cases=cases if isinstance(cases, list) else (),
                        data_seed=task.get("data_seed"))
        if fusion is None and path.resolve() == DEFAULT_STAGE1.resolve() and DEFAULT_FUSION.is_file():
            fusion = DEFAULT_FUSION
        if fusion:
            from workbench.tasks.xray2ct.fusion import StageOneFusion

            predictor.fusion = StageOneFusion.load(fusion, path, linear)
        return predictor

    def check(self, xrays: np.ndarray, geometry: Optional[XrayGeometry]) -> None:
        """Refuse X-rays of another detector size or beam geometry than the checkpoint's (one line, the fix)."""
        if tuple(xrays.shape[-2:]) != tuple(self.geometry.detector_px):
            raise InputError(f"the X-rays are {xrays.shape[-2]}x{xrays.shape[-1]} pixels; the checkpoint expects "
                             f"{self.geometry.detector_px[0]}x{self.geometry.detector_px[1]}: project the CT with "
                             "its geometry or train a checkpoint for yours")
        if geometry is not None and not geometry.same_beams(self.geometry):
            def says(g):
                return f"{g.kind} beam, {'x'.join(f'{f:g}' for f in g.fov_mm)} mm field"
            raise InputError(f"the X-rays were taken with a geometry the checkpoint was not trained for ({says(geometry)}"
                             f" vs {says(self.geometry)}): project with --geometry {self.geometry.kind} or train a "
                             "checkpoint for this geometry")

    @torch.no_grad()
    def predict_with_info(self, xrays: np.ndarray, *, fuse: bool = True) -> tuple[np.ndarray, dict]:
        """HU volume (G, G, G) from (2, nu, nv) line integrals, and whether it was fused with ridge (and why not)."""
        x = torch.from_numpy(np.asarray(xrays, np.float32) / LINE_INTEGRAL_SCALE)[None]
        hu = unit_to_hu(self.model(x)[0, 0].float().numpy()).astype(np.float32)
        if not fuse or self.fusion is None:
            return hu, {"fused": False}
        return self.fusion.fuse(hu, np.asarray(xrays, np.float32), self.geometry)

    def predict(self, xrays: np.ndarray, *, fuse: bool = True) -> np.ndarray:
        """HU volume (G, G, G) from (2, nu, nv) line integrals (fused with ridge when a fusion is attached and
        ridge fits these X-rays; see :mod:`workbench.tasks.xray2ct.fusion`)."""
        return self.predict_with_info(xrays, fuse=fuse)[0]


def refine(hu: np.ndarray, checkpoint: Optional[PathLike] = None, progress=None) -> np.ndarray:
    """Stage 2: the sr task's refinement network (x2) on a stage-1 volume -> (2G)^3 HU."""
    from workbench.tasks.sr.workflow import open_predictor

    path = Path(checkpoint) if checkpoint else DEFAULT_STAGE2
    if not path.is_file():
        raise InputError(f"refinement checkpoint {path} not found: pass a best.pt of `workbench xray2ct train "
                         "--stage 2`")
    predictor = open_predictor(path)
    if tuple(predictor.scale) != (2, 2, 2):
        raise InputError(f"{path} super-resolves x{predictor.scale}, not x2 in 3D: pick a stage-2 checkpoint")
    return predictor.predict(np.asarray(hu, np.float32), progress=progress).astype(np.float32)


def _check_output(output: PathLike, *inputs) -> Path:
    from workbench.data.nifti import ensure_distinct_output

    out = ensure_distinct_output(output, *inputs)
    if not str(out).endswith((".nii", ".nii.gz")):
        raise InputError(f"output {out} must end in .nii.gz (a CT volume in HU)")
    return out


def _write(out: Path, hu: np.ndarray, g: XrayGeometry, info: dict) -> dict:
    from workbench.data.nifti import save_volume

    save_volume(out, hu, g.with_size(hu.shape[0]).affine())
    info = {"output": str(out), "shape": list(hu.shape), **info}
    atomic_write_text(str(out).replace(".nii.gz", "").replace(".nii", "") + ".json", json.dumps(info, indent=2))
    return info


def predict(ap: PathLike, lateral: PathLike, output: PathLike, *, checkpoint: Optional[PathLike] = None,
            refine_checkpoint: Optional[PathLike] = None, refine_default: bool = False,
            fusion: Optional[PathLike | bool] = None, linear: Optional[PathLike] = None) -> dict:
    """Stage 1 (fused with ridge by default; and stage 2 with a refinement checkpoint) from two X-ray files;
    writes OUT and OUT.json. ``fusion`` and ``linear`` as in :meth:`XrayPredictor.from_checkpoint`."""
    out = _check_output(output, ap, lateral, checkpoint, refine_checkpoint, fusion or None, linear)
    predictor = XrayPredictor.from_checkpoint(checkpoint, fusion=fusion, linear=linear)
    xrays = load_views(ap, lateral)
    predictor.check(xrays, geometry_beside(ap))
    t0 = time.perf_counter()
    hu, fused = predictor.predict_with_info(xrays)
    info = {"checkpoint": predictor.source, "fusion": predictor.fusion.source if predictor.fusion else None,
            "fusion_applied": fused, "stage1_seconds": time.perf_counter() - t0}
    if refine_checkpoint or refine_default:
        t0 = time.perf_counter()
        hu = refine(hu, refine_checkpoint)
        info.update(refine=str(refine_checkpoint or DEFAULT_STAGE2), stage2_seconds=time.perf_counter() - t0)
    return _write(out, hu, predictor.geometry, info)


def open_linear(path: Optional[PathLike] = None):
    from workbench.tasks.xray2ct.baselines import LinearModel

    return LinearModel.load(path or DEFAULT_LINEAR)


def reconstruct(method: str, xrays: np.ndarray, g: XrayGeometry, *, predictor: Optional[XrayPredictor] = None,
                linear=None) -> np.ndarray:
    """HU volume of one method: ``network`` (stage 1), ``backprojection``, ``atlas`` or ``ridge``."""
    from workbench.tasks.xray2ct.baselines import reconstruct_baseline

    if method == "network":
        return (predictor or XrayPredictor.from_checkpoint()).predict(xrays)
    needs_model = method in ("atlas", "ridge")
    return reconstruct_baseline(method, xrays, g, (linear or open_linear()) if needs_model else None)


def baseline(method: str, ap: PathLike, lateral: PathLike, output: PathLike, *, model: Optional[PathLike] = None,
             geometry: Optional[str] = None) -> dict:
    """A classical reconstruction: back-projection, the atlas or the ridge model (shipped or ``model``)."""
    out = _check_output(output, ap, lateral, model)
    xrays = load_views(ap, lateral)
    g = geometry_beside(ap) or default_geometry(64, geometry or "parallel")
    if tuple(xrays.shape[-2:]) != tuple(g.detector_px):
        raise InputError(f"the X-rays are {xrays.shape[-2]}x{xrays.shape[-1]} pixels but the geometry has "
                         f"{g.detector_px[0]}x{g.detector_px[1]}: put their geometry.json beside them")
    linear = open_linear(model) if method in ("atlas", "ridge") else None
    hu = reconstruct(method, xrays, g, linear=linear)
    return _write(out, hu, g, {"method": method})


def evaluate(result: PathLike, reference: PathLike, *, xrays_dir: Optional[PathLike] = None) -> dict[str, float]:
    """Metrics of a CT against its reference (same grid); with the case folder, the re-projection error too."""
    from workbench.data.nifti import load_volume
    from workbench.tasks.xray2ct.metrics import evaluate_ct

    res, aff, _ = load_volume(result, "result")
    ref, ref_aff, _ = load_volume(reference, "reference")
    if res.shape != ref.shape or not np.allclose(aff, ref_aff, atol=1e-3):
        raise InputError(f"result {res.shape} and reference {ref.shape} are not on the same grid: compare a "
                         "reconstruction with the ct.nii.gz (64^3) or ct_hr.nii.gz (128^3) of its case")
    case = Path(xrays_dir) if xrays_dir else Path(reference).parent
    xrays = g = None
    if all((case / f).is_file() for f in VIEW_FILES.values()) and (case / "geometry.json").is_file():
        g = geometry_beside(case / VIEW_FILES["ap"])
        xrays = load_views(case / VIEW_FILES["ap"], case / VIEW_FILES["lateral"])
    return evaluate_ct(res, ref, xrays=xrays, geometry=g)


# --------------------------------------------------------------------------- viewers
def sample_case(seed: int = 900_000_001, size: int = 64, kind: str = "parallel") -> dict:
    """A held-out phantom (seed outside every training set) with its noisy X-rays, for viewers and notebooks."""
    from workbench.tasks.xray2ct.geometry import add_photon_noise, project_hu
    from workbench.tasks.xray2ct.phantoms import simulate_phantom

    g = default_geometry(size, kind)
    hu, labels, params = simulate_phantom(seed, size, g.fov_mm)
    p = torch.from_numpy(project_hu(hu, g))
    xrays = add_photon_noise(p, g.photons, torch.Generator().manual_seed(seed)).numpy()
    return {"geometry": g, "ct": hu, "labels": labels, "xrays": xrays, "params": params}
