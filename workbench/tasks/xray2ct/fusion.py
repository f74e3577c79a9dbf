"""Stage-1 fusion: the stage-1 network and the ridge shape model, combined voxel by voxel by a small 3D U-Net.

The stage-1 network and the ridge regression err in different places (the network on
fine anatomy it has not placed exactly, ridge on everything outside its 64-component
shape space), so their mean already beats both. The fusion
(:class:`~workbench.models.fusion.EstimateFusionNet`, model ``estimate_fusion``) reads
``[stage 1, ridge, back-projection]`` in HU / 1000 and predicts, per voxel, the weight of
stage 1 against ridge plus a small residual. Its training data must be *out-of-sample*
outputs of both (phantoms neither was fitted on, e.g. another ``--seed``): on their own
training cases both are better than they will ever be on new X-rays, and a fusion trained
there learns the wrong trust. The checkpoint records the SHA-256 of the stage-1
checkpoint and of the linear model it was trained behind, and refuses any other pair.

Where the ridge model cannot explain the X-rays, the fusion is not used: it learned how
far to trust ridge on cases ridge fits (simulated torsos), so on X-rays far from them (the
real chest CT: ridge re-projects 4-5x worse there than on phantoms) it would trust it too
much. The checkpoint records the largest re-projection error of ridge over its training
cases; a case whose ridge volume re-projects more than :data:`OUT_OF_DISTRIBUTION_FACTOR`
times that keeps the network's own volume, and says so.

Training: random ``data.patch_size``^3 crops (left-right mirrored at random: x is the
patient's left-right axis) of the precomputed estimates, the configured loss (MSE by
default) on the HU window [-1000, 1000] (prediction and target clipped to [-1, 1]);
validation on whole held-out volumes (a seeded tenth of the cases).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
import torch

from workbench.io_utils import InputError
from workbench.training.sampling import Batch
from workbench.training.steps import StepOutput, prediction_previews

PathLike = str | os.PathLike
Tensor = torch.Tensor
INPUTS = ("stage 1", "ridge", "back-projection")
HU_SCALE = 1000.0
OUT_OF_DISTRIBUTION_FACTOR = 1.5


def file_sha256(path: PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def stack_estimates(stage1_hu: np.ndarray, xrays: np.ndarray, g, linear) -> np.ndarray:
    """(3, G, G, G) float32 fusion input: stage 1, ridge and back-projection of one case, in HU / 1000."""
    from workbench.tasks.xray2ct.baselines import backprojection, reconstruct_baseline

    ridge = reconstruct_baseline("ridge", xrays, g, linear)
    return np.stack([stage1_hu, ridge, backprojection(xrays, g)]).astype(np.float32) / HU_SCALE


@dataclass(frozen=True)
class CropParams:
    """Everything random about one training crop."""

    index: int
    origin: tuple[int, int, int]
    flip: bool


def apply_crop(inputs: Tensor, target: Tensor, p: CropParams, patch: int) -> tuple[Tensor, Tensor]:
    """The deterministic part: crop case ``p.index`` at ``p.origin`` and mirror it left-right when ``p.flip``."""
    sl = (p.index, slice(None)) + tuple(slice(o, o + patch) for o in p.origin)
    x, y = inputs[sl].float(), target[sl].float()
    return (x.flip(1), y.flip(1)) if p.flip else (x, y)


class FusionSampler:
    """Batches of (estimates (B, 3, P, P, P), reference (B, 1, P, P, P)) in HU / 1000, reference clipped to [-1, 1].

    ``inputs`` (N, 3, G, G, G) and ``target`` (N, 1, G, G, G) are kept as float16.
    Validation batches are whole volumes of the ``val_idx`` cases, ``val_batch`` at a time.
    """

    def __init__(self, inputs: Tensor, target: Tensor, train_idx: Sequence[int], val_idx: Sequence[int], *,
                 patch: int = 32, augment: bool = True, val_batch: int = 2):
        if not train_idx:
            raise InputError("the fusion needs at least one training case: simulate more cases")
        self.inputs, self.target = inputs.half(), target.clamp(-1, 1).half()
        self.patch = min(int(patch), *self.inputs.shape[-3:])
        self.train_idx, self.val_idx = list(train_idx), list(val_idx)
        self.augment, self.val_batch = bool(augment), int(val_batch)

    def sample_params(self, generator: torch.Generator, index: int) -> CropParams:
        hi = [s - self.patch + 1 for s in self.inputs.shape[-3:]]
        origin = tuple(int(torch.randint(h, (1,), generator=generator)) for h in hi)
        flip = bool(torch.rand(1, generator=generator) < 0.5) and self.augment
        return CropParams(index, origin, flip)

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        picks = torch.randint(len(self.train_idx), (batch_size,), generator=generator).tolist()
        pairs = [apply_crop(self.inputs, self.target, self.sample_params(generator, self.train_idx[k]), self.patch)
                 for k in picks]
        x, y = (torch.stack(t) for t in zip(*pairs))
        return Batch(x, y, torch.zeros(batch_size, dtype=torch.long))

    def validation_batches(self) -> list[Batch]:
        out = []
        for k in range(0, len(self.val_idx), self.val_batch):
            idx = self.val_idx[k:k + self.val_batch]
            out.append(Batch(self.inputs[idx].float(), self.target[idx].float(), torch.zeros(len(idx), dtype=torch.long)))
        return out


def fusion_step(model, batch: Batch, ctx) -> StepOutput:
    """The configured loss between the clipped fused volume and the clipped reference (HU window [-1000, 1000])."""
    pred = model(batch.input, batch.cond).float().clamp(-1.0, 1.0)
    loss, terms = ctx.criterion(pred, batch.target, batch.mask)
    return StepOutput(loss, terms, {} if ctx.training else prediction_previews(batch, pred))


def fusion_config():
    """800 steps of 4 crops of 32^3, AdamW 2e-3 with OneCycle, MSE: ~15 min on 2 CPU cores for 240 cases."""
    from workbench.config import Config

    return Config.model_validate({
        "task": "xray2ct", "data": {"batch_size": 4, "patch_size": 32, "augment": True},
        "model": {"name": "estimate_fusion", "base_filters": 16},
        "loss": {"weights": {"mse": 1.0}},
        "train": {"steps": 800, "lr": 2e-3, "optimizer": "adamw", "weight_decay": 1e-4, "schedule": "onecycle",
                  "val_every": 100, "val_batches": 12, "checkpoint_every": 100, "grad_clip": 1.0},
    })


def estimates_of(dataset, predictor, linear, progress=None) -> tuple[Tensor, Tensor, list[float]]:
    """Fusion inputs (N, 3, G, G, G), references (N, 1, G, G, G) and ridge's re-projection error of every case,
    from its own X-ray files."""
    from workbench.tasks.xray2ct.data import VIEW_FILES, load_views
    from workbench.tasks.xray2ct.metrics import reprojection_error

    xs, ys, errors = [], [], []
    for k, name in enumerate(dataset.names):
        case = Path(dataset.folder) / name
        xr = load_views(case / VIEW_FILES["ap"], case / VIEW_FILES["lateral"])
        x = stack_estimates(predictor.predict(xr, fuse=False), xr, predictor.geometry, linear)
        errors.append(reprojection_error(x[1] * HU_SCALE, xr, predictor.geometry))
        xs.append(torch.from_numpy(x).half())
        ys.append(torch.from_numpy(dataset.hu[k].astype(np.float32) / HU_SCALE)[None].half())
        if progress:
            progress(k + 1, len(dataset))
    return torch.stack(xs), torch.stack(ys), errors


def make_fusion_trainer(dataset, out_dir: Optional[PathLike], config, *, stage1: Optional[PathLike] = None,
                        linear: Optional[PathLike] = None, callbacks: Iterable = (), loss_weights=None, progress=None):
    """A fusion trainer behind the stage-1 checkpoint ``stage1`` and the linear model ``linear`` (default: shipped)."""
    from workbench.models import build_model
    from workbench.tasks.xray2ct.workflow import DEFAULT_LINEAR, DEFAULT_STAGE1, XrayPredictor, open_linear, split
    from workbench.training.trainer import Trainer

    if config.model.name != "estimate_fusion":
        raise InputError(f"--stage fusion trains the model 'estimate_fusion', not {config.model.name!r}: start from "
                         "the defaults (omit --config)")
    stage1_path, linear_path = Path(stage1 or DEFAULT_STAGE1), Path(linear or DEFAULT_LINEAR)
    predictor = XrayPredictor.from_checkpoint(stage1_path, fusion=False)
    if dataset.geometry.to_dict() != predictor.geometry.to_dict():
        raise InputError(f"the cases of {dataset.folder} were taken with another geometry than the stage-1 "
                         "checkpoint's: simulate them with its geometry and size")
    model_linear = open_linear(linear_path)
    seen = set(predictor.train_cases) & set(dataset.names) if predictor.data_seed == dataset.seed else set()
    if seen:
        raise InputError(f"{len(seen)} of these cases trained the stage-1 network (same simulation seed "
                         f"{dataset.seed}): the fusion must learn from cases it never saw; simulate with another "
                         "--seed")
    inputs, target, ridge_errors = estimates_of(dataset, predictor, model_linear, progress)
    train_idx, val_idx = split(len(dataset), config.train.seed)
    sampler = FusionSampler(inputs, target, train_idx, val_idx, patch=config.data.patch_size,
                            augment=config.data.augment)
    torch.manual_seed(config.train.seed)
    spec = {"in_channels": len(INPUTS), "out_channels": 1}
    model = build_model(config.model, **spec)
    g = predictor.geometry
    task_meta = {"task": "xray2ct", "stage": "fusion", "geometry": g.to_dict(), "inputs": list(INPUTS),
                 "stage1": {"path": str(stage1_path), "sha256": file_sha256(stage1_path)},
                 "linear": {"path": str(linear_path), "sha256": file_sha256(linear_path)},
                 "ridge_reprojection_error": {"max": max(ridge_errors), "median": float(np.median(ridge_errors))},
                 "data_seed": dataset.seed, "train_cases": [dataset.names[i] for i in train_idx],
                 "val_cases": [dataset.names[i] for i in val_idx]}
    return Trainer(model, sampler, config, out_dir=out_dir, callbacks=tuple(callbacks), loss_weights=loss_weights,
                   model_meta={"name": config.model.name, **spec}, task_meta=task_meta, step=fusion_step)


class StageOneFusion:
    """A trained fusion with the linear model it was trained behind; :meth:`apply` fuses one case."""

    def __init__(self, model: torch.nn.Module, linear, source: str, meta: dict):
        self.model, self.linear, self.source, self.meta = model.eval(), linear, source, meta

    @classmethod
    def load(cls, path: PathLike, stage1_path: PathLike, linear: Optional[PathLike] = None) -> "StageOneFusion":
        """Open a fusion checkpoint; refuses one trained behind another stage-1 checkpoint or linear model."""
        from workbench.config import Config
        from workbench.models import build_model
        from workbench.tasks.xray2ct.workflow import DEFAULT_LINEAR, open_linear
        from workbench.training.checkpoint import load_checkpoint
        from workbench.training.ema import model_weights

        path = Path(path)
        if not path.is_file():
            raise InputError(f"fusion checkpoint {path} not found: pass a best.pt of `workbench xray2ct train "
                             "--stage fusion`, or --no-fusion")
        ckpt = load_checkpoint(path)
        meta = ckpt.get("task_meta") or {}
        if meta.get("task") != "xray2ct" or meta.get("stage") != "fusion":
            raise InputError(f"{path} is not a fusion checkpoint (task {meta.get('task', 'dwi')}, stage "
                             f"{meta.get('stage', '?')}): pick a best.pt of `workbench xray2ct train --stage fusion`")
        if file_sha256(stage1_path) != meta["stage1"]["sha256"]:
            raise InputError(f"the fusion {path} was trained behind another stage-1 checkpoint "
                             f"({meta['stage1']['path']}), not {stage1_path}: train a fusion for this one "
                             "(`train --stage fusion --stage1 CKPT`) or pass --no-fusion")
        linear_path = Path(linear or DEFAULT_LINEAR)
        if file_sha256(linear_path) != meta["linear"]["sha256"]:
            raise InputError(f"the fusion {path} was trained behind the linear model {meta['linear']['path']}, not "
                             f"{linear_path}: pass that one with --linear, or --no-fusion")
        config = Config.model_validate(ckpt["config"])
        mm = ckpt["model_meta"]
        model = build_model(config.model, in_channels=mm["in_channels"], out_channels=mm["out_channels"])
        model.load_state_dict({k: v.float() for k, v in model_weights(ckpt).items()})
        return cls(model, open_linear(linear_path), str(path), meta)

    @property
    def ridge_error_limit(self) -> Optional[float]:
        """Ridge re-projection error above which a case keeps the network's volume (None: no limit recorded)."""
        fit = self.meta.get("ridge_reprojection_error")
        return OUT_OF_DISTRIBUTION_FACTOR * float(fit["max"]) if fit else None

    @torch.no_grad()
    def fuse(self, stage1_hu: np.ndarray, xrays: np.ndarray, g) -> tuple[np.ndarray, dict]:
        """HU volume (G, G, G) and what was done: fused, or the stage-1 volume where ridge does not fit the X-rays."""
        from workbench.tasks.xray2ct.metrics import reprojection_error

        x = stack_estimates(stage1_hu, xrays, g, self.linear)
        error, limit = reprojection_error(x[1] * HU_SCALE, xrays, g), self.ridge_error_limit
        info = {"fused": limit is None or error <= limit, "ridge_reprojection_error": round(error, 4),
                "limit": None if limit is None else round(limit, 4)}
        if not info["fused"]:
            return np.asarray(stage1_hu, np.float32), info
        return (self.model(torch.from_numpy(x)[None])[0, 0].float().numpy() * HU_SCALE).astype(np.float32), info

    def apply(self, stage1_hu: np.ndarray, xrays: np.ndarray, g) -> np.ndarray:
        """:meth:`fuse`'s volume."""
        return self.fuse(stage1_hu, xrays, g)[0]
