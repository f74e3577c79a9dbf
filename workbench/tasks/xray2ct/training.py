"""Stage-1 training: X-rays re-projected from each (augmented) volume with fresh photon noise, and the objective.

The sampler keeps only CT volumes; every batch projects them through the task's
geometry (:func:`~workbench.tasks.xray2ct.geometry.project`) with Poisson noise at a
photon count drawn per case (log-uniform over a decade around the geometry's), so the
network never sees the same noise twice and is not tied to one dose. Augmentation:
left-right mirror (the projection is redone, so it stays physical) and a HU scaling.
Every random choice is drawn from the trainer's generator into :class:`CaseParams`,
then applied by a deterministic function (torchio's pattern).

The objective (:func:`xray2ct_step`) is seed 003's: the composite loss (L1 1, SSIM 0.5,
edge 0.1, perceptual 0.1 when the user gives a feature network) on the 64^3 output,
deep supervision of the 16^3 and 32^3 outputs against the area-pooled target (the
``multiscale`` term, 0.3), and a projection-consistency term: the L1 distance between
the re-projected prediction and the input X-rays (``projection``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from workbench.tasks.xray2ct.data import hu_to_unit
from workbench.tasks.xray2ct.geometry import LINE_INTEGRAL_SCALE, MU_WATER, XrayGeometry, add_photon_noise, project
from workbench.training.sampling import Batch
from workbench.training.steps import StepOutput, prediction_previews, preview_slice

Tensor = torch.Tensor


def unit_to_mu(t: Tensor) -> Tensor:
    """Network units -> attenuation (1/mm): ``HU = 2000 t - 1000`` so ``mu = 2 mu_water t`` (>= 0)."""
    return (2.0 * MU_WATER * t).clamp_min(0.0)


def xrays_of(hu_unit: Tensor, g: XrayGeometry, photons: Sequence[float], generators: Sequence[torch.Generator]
             ) -> Tensor:
    """Network inputs (B, 2, nu, nv): noisy line integrals of (B, 1, G, G, G) volumes in network units, scaled."""
    with torch.no_grad():
        p = project(unit_to_mu(hu_unit.float()), g)
        noisy = torch.stack([add_photon_noise(p[b], float(n), gen) for b, (n, gen) in
                             enumerate(zip(photons, generators))])
    return noisy / LINE_INTEGRAL_SCALE


@dataclass(frozen=True)
class CaseParams:
    """Everything random about one training case."""

    index: int
    flip: bool
    hu_scale: float
    photons: float
    noise_seed: int


def apply_case(hu: np.ndarray, p: CaseParams) -> np.ndarray:
    """The deterministic part: mirror and HU scaling of one volume -> network units, float32."""
    v = hu.astype(np.float32)
    if p.flip:
        v = v[::-1]
    v = (v + 1000.0) * p.hu_scale - 1000.0
    return hu_to_unit(np.ascontiguousarray(v)).astype(np.float32)


class XraySampler:
    """Batches of (X-rays (B, 2, nu, nv), CT (B, 1, G, G, G)) from HU volumes, projected on the fly."""

    def __init__(self, volumes: Sequence[np.ndarray], train_idx: Sequence[int], val_idx: Sequence[int],
                 g: XrayGeometry, *, augment: bool = True, photon_range: float = 10.0, val_seed: int = 4242,
                 val_batch: int = 4):
        self.volumes, self.g = volumes, g
        self.train_idx, self.val_idx = list(train_idx), list(val_idx)
        self.augment, self.photon_range = bool(augment), float(photon_range)
        self.val_seed, self.val_batch = int(val_seed), int(val_batch)
        self._val: Optional[list[Batch]] = None

    def sample_params(self, generator: torch.Generator, index: int) -> CaseParams:
        u = torch.rand(3, generator=generator).tolist()
        seed = int(torch.randint(2 ** 62, (1,), generator=generator))
        if not self.augment:
            return CaseParams(index, False, 1.0, self.g.photons, seed)
        span = math.log(self.photon_range)
        return CaseParams(index, u[0] < 0.5, 0.97 + 0.06 * u[1],
                          float(self.g.photons * math.exp((u[2] - 0.5) * span)), seed)

    def make_batch(self, params: Sequence[CaseParams]) -> Batch:
        y = torch.from_numpy(np.stack([apply_case(self.volumes[p.index], p) for p in params]))[:, None]
        gens = [torch.Generator().manual_seed(p.noise_seed) for p in params]
        x = xrays_of(y, self.g, [p.photons for p in params], gens)
        return Batch(x, y, torch.zeros(len(params), dtype=torch.long))

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        picks = torch.randint(len(self.train_idx), (batch_size,), generator=generator).tolist()
        return self.make_batch([self.sample_params(generator, self.train_idx[k]) for k in picks])

    def validation_batches(self) -> list[Batch]:
        if self._val is None:
            gen = torch.Generator().manual_seed(self.val_seed)
            params = [CaseParams(i, False, 1.0, self.g.photons, int(torch.randint(2 ** 62, (1,), generator=gen)))
                      for i in self.val_idx]
            self._val = [self.make_batch(params[k:k + self.val_batch]) for k in range(0, len(params), self.val_batch)]
        return self._val


def deep_supervision(outputs: Sequence[Tensor], target: Tensor) -> Tensor:
    """Mean L1 of the coarse outputs against the area-pooled target (seed 003's multi-scale loss)."""
    losses = [F.l1_loss(o.float(), F.adaptive_avg_pool3d(target, o.shape[-3:])) for o in outputs]
    return torch.stack(losses).mean()


def projection_consistency(pred: Tensor, xrays: Tensor, g: XrayGeometry) -> Tensor:
    """L1 between the re-projected prediction and the input X-rays (both in the scaled line-integral units)."""
    with torch.autocast(pred.device.type, enabled=False):
        return F.l1_loss(project(unit_to_mu(pred.float()), g) / LINE_INTEGRAL_SCALE, xrays.float())


def xray2ct_step(model, batch: Batch, ctx, *, geometry: XrayGeometry) -> StepOutput:
    """One stage-1 step: composite loss at full size + ``multiscale`` deep supervision + ``projection`` consistency."""
    outs = model(batch.input, batch.cond, all_scales=True)
    pred = outs[-1].float()
    weights = ctx.criterion.weights.get()
    loss, terms = ctx.criterion(pred, batch.target, batch.mask, skip=("multiscale", "projection"))
    for name, fn in (("multiscale", lambda: deep_supervision(outs[:-1], batch.target)),
                     ("projection", lambda: projection_consistency(pred, batch.input, geometry))):
        w = weights.get(name, 0.0)
        if w > 0 or not ctx.training:      # validation reports every term
            value = fn()
            terms[name] = float(value.detach())
            if w > 0:
                loss = loss + w * value
    images = {}
    if not ctx.training:
        images = {"ap": preview_slice(batch.input[:, :1, :, None]), **prediction_previews(batch, pred)}
    return StepOutput(loss, terms, images)


def make_step(geometry: XrayGeometry):
    return partial(xray2ct_step, geometry=geometry)
