"""What every front end calls for diffuse optical tomography: simulate, train, predict, baseline, evaluate.

The CLI (:mod:`workbench.tasks.dot.task`), the napari panels and the notebooks are thin
layers over these functions. Optical-property volumes are (2, X, Y, Z) float32 arrays
(mu_a, mu_s' in 1/mm) in the core and (X, Y, Z, 2) NIfTI files with the geometry's mm
affine on disk.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np
import torch

from workbench.io_utils import InputError, atomic_write_text
from workbench.tasks.dot.data import (DotDataset, Measurements, check_geometry, load_dataset, load_measurements,
                                      simulate_dataset)
from workbench.tasks.dot.physics import Geometry, default_geometry

PathLike = str | os.PathLike
ProgressFn = Callable[[int, int], None]
WEIGHTS_DIR = Path(__file__).with_name("weights")
DEFAULT_CHECKPOINT = WEIGHTS_DIR / "dot_net.pt"


def geometry_for(config) -> Geometry:
    from workbench.tasks import get_task

    return default_geometry(get_task("dot").options(config).grid)


# --------------------------------------------------------------------------- simulate
def simulate(out_dir: PathLike, *, n: int = 8, grid: int = 32, seed: int = 0, workers: Optional[int] = None,
             progress: Optional[ProgressFn] = None, should_stop=None) -> list[Path]:
    """``n`` phantom cases of the built-in geometry on a ``grid``^3 grid (resumable; see :mod:`.data`)."""
    if n < 1:
        raise InputError(f"--n must be >= 1, got {n}")
    if grid not in (16, 24, 32, 48):
        raise InputError(f"--grid {grid} is not supported: use 16, 24, 32 (default) or 48")
    return simulate_dataset(out_dir, n, geometry=default_geometry(grid), seed=seed, workers=workers,
                            progress=progress, should_stop=should_stop)


# --------------------------------------------------------------------------- training
def split(n: int, seed: int, val_fraction: float = 0.1) -> tuple[list[int], list[int]]:
    """A seeded split of ``n`` cases: (train, validation); at least one validation case."""
    order = np.random.default_rng(seed).permutation(n).tolist()
    n_val = max(1, int(round(n * val_fraction))) if n > 1 else 0
    return sorted(order[n_val:]) or order, sorted(order[:n_val]) or order


def make_trainer(dataset: DotDataset, out_dir: Optional[PathLike], config, *, callbacks: Iterable = (),
                 loss_weights=None):
    """A ready trainer: a seeded tenth of the cases held out for validation (early stopping, best.pt)."""
    from workbench.models import build_model
    from workbench.tasks import get_task
    from workbench.tasks.dot.training import DotSampler, feature_scales, make_step
    from workbench.training.trainer import Trainer

    g = dataset.geometry
    if get_task("dot").options(config).grid != g.grid:   # the data decide the grid (recorded in the run's config)
        config.options = {**config.options, "grid": g.grid}
    opts = get_task("dot").options(config)
    train_idx, val_idx = split(len(dataset), config.train.seed)
    scales = feature_scales(dataset, train_idx)
    sampler = DotSampler(dataset, train_idx, val_idx, scales, sigma_amp=opts.noise_amplitude,
                         sigma_phase_deg=opts.noise_phase_deg, subsample_prob=opts.subsample_prob,
                         subsample_min=opts.subsample_min, inclusion_weight=opts.inclusion_weight)
    torch.manual_seed(config.train.seed)
    lambdas = [float(v) for v in opts.tikhonov_lambdas]
    config.model.options = {**config.model.options, "tikhonov_channels": 2 * len(lambdas)}
    spec = {"in_channels": 4, "out_channels": 2, "n_pairs": g.n_pairs, "output_grid": g.grid}
    model = build_model(config.model, **spec)
    inverse = {"lambdas": lambdas, "sigma_amp": opts.noise_amplitude, "sigma_phase_deg": opts.noise_phase_deg}
    _set_geometry(model, g, scales, inverse)
    meta = {"name": config.model.name, **spec}
    task_meta = {"task": "dot", "geometry": g.to_dict(), "feature_scales": scales, "inverse": inverse,
                 "train_cases": [dataset.names[i] for i in train_idx], "val_cases": [dataset.names[i] for i in val_idx]}
    return Trainer(model, sampler, config, out_dir=out_dir, callbacks=tuple(callbacks), loss_weights=loss_weights,
                   model_meta=meta, task_meta=task_meta, step=make_step(opts.channel_weights))


def _set_geometry(model, geometry: Geometry, scales, inverse: Optional[dict]) -> None:
    """The network's geometry buffers: lifting weights, pair positions and (if it reads them) the Tikhonov map
    (computed once per geometry and kept on disk: :mod:`.geometry_cache`)."""
    from workbench.tasks.dot.geometry_cache import geometry_buffers
    from workbench.tasks.dot.training import pair_positions

    lift, op = geometry_buffers(geometry, model.lift_grid, scales, inverse)
    model.set_geometry(torch.from_numpy(lift), pair_positions(geometry), None if op is None else torch.from_numpy(op))


def resolve_config(path: Optional[PathLike]):
    from workbench.config import load_config
    from workbench.tasks import get_task

    if path is None:
        return get_task("dot").default_config()
    config = load_config(path)
    if config.task != "dot":
        raise InputError(f"{path} is a config for task '{config.task}'; use `workbench config --task dot` as a start")
    return config


def train(data_dir: PathLike, out_dir: PathLike, config, *, resume: bool = False, callbacks: Iterable = ()):
    """Train on the simulated cases of ``data_dir``; checkpoints, config.yaml and metrics.csv in ``out_dir``."""
    if resume and not (Path(out_dir) / "last.pt").is_file():
        raise InputError(f"--resume: {out_dir}/last.pt does not exist: drop --resume to start a new run")
    dataset = load_dataset(data_dir)
    trainer = make_trainer(dataset, out_dir, config, callbacks=callbacks)
    return trainer.fit(resume=resume)


# --------------------------------------------------------------------------- prediction
@dataclass
class DotPredictor:
    """A trained network with its geometry and input normalisation."""

    model: torch.nn.Module
    geometry: Geometry
    scales: list[float]
    source: str

    @classmethod
    def from_checkpoint(cls, path: Optional[PathLike] = None) -> "DotPredictor":
        from workbench.config import Config
        from workbench.models import build_model
        from workbench.tasks.dot.training import reference_data
        from workbench.training.checkpoint import load_checkpoint
        from workbench.training.ema import model_weights

        path = Path(path) if path else DEFAULT_CHECKPOINT
        if not path.is_file():
            raise InputError(f"checkpoint {path} not found: pass a best.pt of `workbench dot train`, or omit "
                             "--checkpoint for the shipped one")
        ckpt = load_checkpoint(path)
        task = ckpt.get("task_meta") or {}
        if task.get("task") != "dot":
            raise InputError(f"checkpoint {path} is for task '{task.get('task', 'dwi')}', not dot: pick a checkpoint "
                             "written by `workbench dot train`")
        config = Config.model_validate(ckpt["config"])
        meta = ckpt["model_meta"]
        g = Geometry.from_dict(task["geometry"])
        model = build_model(config.model, **{k: meta[k] for k in ("in_channels", "out_channels", "n_pairs",
                                                                  "output_grid")})
        model.load_state_dict({k: v.float() for k, v in model_weights(ckpt).items()})
        _set_geometry(model, g, task["feature_scales"], task.get("inverse"))
        reference_data(g)   # the homogeneous reference solve, once here rather than in the first predict
        return cls(model.eval(), g, list(task["feature_scales"]), str(path))

    def predict(self, data: np.ndarray, mask: Optional[np.ndarray] = None) -> np.ndarray:
        """(2, X, Y, Z) mu in 1/mm from (2, S, D) complex data (CW, modulated) of this geometry."""
        from workbench.tasks.dot.training import features, reference_data, to_physical

        x = torch.from_numpy(features(data, reference_data(self.geometry), self.scales, mask))[None]
        with torch.no_grad():
            rel = self.model(x, torch.zeros(1, dtype=torch.long))[0].float().numpy()
        return to_physical(rel, self.geometry)

    def attention(self) -> Optional[np.ndarray]:
        """The deepest spatial-attention map of the last prediction, (X, Y, Z) in [0, 1], or None."""
        amap = self.model.attention_map()
        return None if amap is None else amap[0, 0].float().numpy()


def read_input(path: PathLike, geometry: Geometry, what: str = "the checkpoint") -> tuple[np.ndarray, Optional[np.ndarray]]:
    """``(data (2, S, D), mask)`` of a measurement file taken with ``geometry``."""
    meas: Measurements = load_measurements(path)
    return check_geometry(meas, geometry, what), meas.mask


def save_mu(path: PathLike, mu: np.ndarray, geometry: Geometry) -> Path:
    from workbench.data.nifti import save_volume

    return save_volume(path, np.moveaxis(np.asarray(mu, np.float32), 0, -1), geometry.affine())


def _check_output(output: PathLike, *inputs) -> Path:
    from workbench.data.nifti import ensure_distinct_output

    out = ensure_distinct_output(output, *inputs)
    if not str(out).endswith((".nii", ".nii.gz")):
        raise InputError(f"output {out} must end in .nii.gz (a 2-channel NIfTI of mu_a, mu_s')")
    return out


def predict(measurements: PathLike, output: PathLike, *, checkpoint: Optional[PathLike] = None) -> dict:
    """Reconstruct mu_a and mu_s' from a measurement file with the network; writes OUT (X, Y, Z, 2) and OUT.json."""
    import time

    out = _check_output(output, measurements, checkpoint)
    predictor = DotPredictor.from_checkpoint(checkpoint)
    data, mask = read_input(measurements, predictor.geometry)
    t0 = time.perf_counter()
    mu = predictor.predict(data, mask)
    seconds = time.perf_counter() - t0
    save_mu(out, mu, predictor.geometry)
    info = {"output": str(out), "checkpoint": predictor.source, "seconds": seconds, "shape": list(mu.shape),
            "pairs_used": int(mask.sum()) if mask is not None else predictor.geometry.n_pairs}
    atomic_write_text(str(out).replace(".nii.gz", "").replace(".nii", "") + ".json", json.dumps(info, indent=2))
    return info


def reconstruct(method: str, data: np.ndarray, geometry: Geometry, mask=None, *, predictor=None, **kw):
    """(2, X, Y, Z) mu of one method: ``network``, ``tikhonov`` or ``gauss-newton``; plus an info dict."""
    from workbench.tasks.dot import baselines

    if method == "network":
        return (predictor or DotPredictor.from_checkpoint()).predict(data, mask), {}
    if method == "tikhonov":
        return baselines.tikhonov(geometry, data, mask=mask, **kw)
    if method == "gauss-newton":
        return baselines.gauss_newton(geometry, data, mask=mask, **kw)
    raise InputError(f"unknown method {method!r}; known: network, tikhonov, gauss-newton")


def baseline(method: str, measurements: PathLike, output: PathLike, *, grid: Optional[int] = None,
             iterations: int = 3) -> dict:
    """A model-based reconstruction (no training): Tikhonov (Rytov, GCV) or regularised Gauss-Newton."""
    out = _check_output(output, measurements)
    meas = load_measurements(measurements)
    geometry = meas.geometry or default_geometry(grid or 32)
    data = check_geometry(meas, geometry, "the geometry")
    kw = {"iterations": iterations} if method == "gauss-newton" else {}
    mu, info = reconstruct(method, data, geometry, meas.mask, **kw)
    save_mu(out, mu, geometry)
    return {"output": str(out), "method": method,
            **{k: v for k, v in info.items() if isinstance(v, (int, float, str))}}


def load_mu(path: PathLike, what: str) -> tuple[np.ndarray, np.ndarray]:
    from workbench.data.nifti import load_volume

    data, affine, _ = load_volume(path, what)
    if data.ndim != 4 or data.shape[-1] != 2:
        raise InputError(f"{what} {path} has shape {data.shape}; expected (X, Y, Z, 2): mu_a and mu_s' in 1/mm")
    return np.moveaxis(data, -1, 0), affine


def evaluate(result: PathLike, reference: PathLike, *, labels: Optional[PathLike] = None) -> dict[str, float]:
    """Metrics of a reconstruction against a reference mu (the inclusions from ``labels``, or the case's labels.nii.gz)."""
    from workbench.data.nifti import load_volume
    from workbench.tasks.dot.metrics import evaluate_dot

    res, aff = load_mu(result, "result")
    ref, ref_aff = load_mu(reference, "reference")
    if res.shape != ref.shape or not np.allclose(aff, ref_aff, atol=1e-3):
        raise InputError(f"result {res.shape[1:]} and reference {ref.shape[1:]} are not on the same grid: "
                         "compare a reconstruction with the mu.nii.gz of its own case")
    lab_path = Path(labels) if labels else Path(reference).with_name("labels.nii.gz")
    inclusions = load_volume(lab_path, "labels")[0].astype(int) if lab_path.is_file() else None
    geometry = _geometry_of(ref.shape[1], aff)
    return evaluate_dot(res, ref, geometry.body_mask, inclusions=inclusions, background=geometry.background,
                        voxel_mm=geometry.voxel_mm)


def _geometry_of(grid: int, affine: np.ndarray) -> Geometry:
    g = default_geometry(grid)
    if not np.allclose(g.affine(), affine, atol=1e-3):
        raise InputError("the reference is not on the built-in geometry's grid: evaluate reconstructions of "
                         "`workbench dot simulate` cases")
    return g


# --------------------------------------------------------------------------- viewers
def sample_case(seed: int = 900_000_001, grid: int = 32) -> dict:
    """A held-out phantom (seed outside every training set) with its noisy data: arrays for viewers and notebooks."""
    from workbench.tasks.dot.data import add_noise
    from workbench.tasks.dot.phantoms import simulate_phantom
    from workbench.tasks.dot.physics import simulate_measurements

    g = default_geometry(grid)
    mu, labels, params = simulate_phantom(seed, g)
    data = add_noise(simulate_measurements(g, mu), np.random.default_rng(seed), 0.01, 0.5)
    return {"geometry": g, "mu": mu, "labels": labels, "data": data, "params": params}
