"""Training the DOT network through the generic trainer: features, sampler, objective.

Augmentation (training batches only, all draws from the trainer's generator): quarter
turns of the phantom about the cylinder axis with the matching permutation of sources and
detectors (exact for the built-in geometry: :meth:`Geometry.quarter_turn`), measurement
noise, and seed 002's random measurement subsets.

The network sees Rytov data (log-amplitude and phase differences of each pair to the
homogeneous reference, divided by per-feature scales measured on the training set) and
a presence flag per pair; it predicts the relative deviations ``mu / mu0 - 1`` of
mu_a and mu_s' (physical units: :func:`to_physical`). Noise is drawn when a batch is
made (seed 002's augmentation: noise and random measurement subsets), from the
trainer's generator, so resumed runs draw the same batches.
"""

from __future__ import annotations

from functools import lru_cache, partial
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import sparse

from workbench.tasks.dot.baselines import rytov_data as rytov
from workbench.tasks.dot.data import DotDataset, add_noise
from workbench.tasks.dot.physics import Geometry, homogeneous, simulate_measurements
from workbench.training.sampling import Batch
from workbench.training.steps import StepOutput, prediction_previews

N_FEATURES = 3  # CW log-amplitude, modulated log-amplitude, modulated phase


@lru_cache(maxsize=8)
def reference_data(geometry: Geometry) -> np.ndarray:
    """(2, S, D) complex data of the homogeneous background medium (the Rytov reference); kept on disk per
    geometry (:mod:`~workbench.tasks.dot.geometry_cache`)."""
    from workbench.tasks.dot.geometry_cache import cached_arrays

    arrays = cached_arrays("reference", {"geometry": geometry.to_dict()},
                           lambda: {"data": simulate_measurements(geometry, homogeneous(geometry))})
    return arrays["data"] if "data" in arrays else simulate_measurements(geometry, homogeneous(geometry))


def feature_scales(dataset: DotDataset, indices: Sequence[int]) -> list[float]:
    """Standard deviation of each Rytov feature over the training cases (noise-free), the input normalisation."""
    ref = reference_data(dataset.geometry)
    y = np.stack([rytov(dataset.data[i], ref) for i in indices])
    return [float(max(np.std(y[:, k]), 1e-6)) for k in range(N_FEATURES)]


def features(data: np.ndarray, reference: np.ndarray, scales: Sequence[float],
             mask: Optional[np.ndarray] = None) -> np.ndarray:
    """(S*D, 4) float32 network input of (2, S, D) data: normalised Rytov features and the presence flag."""
    present = np.ones(reference.shape[1:], bool) if mask is None else np.asarray(mask, bool)
    data = np.where(present[None], data, reference)  # unmeasured pairs may hold anything (NaN, 0)
    y = rytov(data, reference) / np.asarray(scales, float)[:, None, None]
    y = y.reshape(N_FEATURES, -1).T
    present = present.ravel()
    y = np.where(present[:, None], y, 0.0)
    return np.concatenate([y, present[:, None]], axis=1).astype(np.float32)


def relative(mu: np.ndarray, geometry: Geometry) -> np.ndarray:
    """``mu / mu0 - 1`` per channel (the network's target)."""
    mu0 = np.asarray(geometry.background, np.float32).reshape(-1, *([1] * (mu.ndim - 1)))
    return (mu / mu0 - 1).astype(np.float32)


def to_physical(rel: np.ndarray, geometry: Geometry) -> np.ndarray:
    """(2, X, Y, Z) mu in 1/mm from relative deviations; background outside the body; mu_a >= 1e-4, mu_s' >= 0.05."""
    mu0 = np.asarray(geometry.background, np.float32).reshape(2, 1, 1, 1)
    mu = mu0 * (1 + rel)
    mu = np.where(geometry.body_mask[None], mu, mu0)
    return np.stack([np.maximum(mu[0], 1e-4), np.maximum(mu[1], 0.05)]).astype(np.float32)


def lifting_weights(geometry: Geometry, lift_grid: int) -> torch.Tensor:
    """(P, g, g, g) where each pair's data are sensitive: |d ln A_cw / d mu_a| on the body, pooled to ``lift_grid``,
    each row summing to 1 (the network places its per-pair features with these)."""
    return torch.from_numpy(_lifting_weights(geometry, int(lift_grid)))


@lru_cache(maxsize=4)
def _lifting_weights(geometry: Geometry, lift_grid: int) -> np.ndarray:
    from workbench.tasks.dot.physics import ForwardModel

    mu = homogeneous(geometry)
    m, j_mua, _ = ForwardModel(geometry, mu[0], mu[1]).jacobian(0.0)
    sens = np.abs((j_mua / m[..., None]).real).reshape(-1, j_mua.shape[-1])   # (P, N_body)
    vol = np.zeros((len(sens),) + geometry.shape, np.float32)
    vol[:, geometry.body_mask] = sens
    t = torch.from_numpy(vol)[:, None]
    pooled = F.adaptive_avg_pool3d(t, lift_grid)[:, 0]
    pooled = pooled / pooled.flatten(1).sum(1).clamp_min(1e-30)[:, None, None, None]
    return pooled.numpy()


def tikhonov_operator(geometry: Geometry, lift_grid: int, scales: Sequence[float], lambdas: Sequence[float], *,
                      sigma_amp: float, sigma_phase_deg: float) -> torch.Tensor:
    """(3, P, 2 L, g, g, g) linear map from the network's normalised features to Tikhonov reconstructions.

    For each relative weight ``lambdas[l]`` (times the largest squared singular value of the
    noise-weighted Rytov Jacobian ``J`` at the background) the map gives the relative
    deviations of mu_a (channel ``2 l``) and mu_s' (``2 l + 1``) of
    ``argmin ||W (J x - y)||^2 + lam ||x||^2`` (as :func:`~workbench.tasks.dot.baselines.tikhonov`
    with a fixed lam, all pairs), mean-pooled over the body voxels of each lift-grid cell.
    An absent pair enters as a zero measurement (the network's features are 0 there).
    """
    from workbench.tasks.dot import baselines

    sigma_amp, sigma_phase_deg = max(float(sigma_amp), 1e-3), max(float(sigma_phase_deg), 0.05)
    _, A = baselines._background(geometry)                              # (3P, 2 N_body)
    evals, U = baselines._background_eig(geometry, sigma_amp, sigma_phase_deg, np.ones(
        (len(geometry.sources_mm), len(geometry.detectors_mm)), bool).tobytes())
    w = baselines._weights(geometry.n_pairs, sigma_amp, sigma_phase_deg)
    col_scale = np.repeat(np.asarray(scales, float), geometry.n_pairs)   # features are y / scale
    body = geometry.body_mask
    n = int(body.sum())
    g = lift_grid
    idx = np.argwhere(body)
    cell = np.ravel_multi_index(tuple(((idx * g) // np.asarray(body.shape)).T), (g,) * 3)
    count = np.bincount(cell, minlength=g ** 3).astype(np.float64)
    pool = sparse.csr_matrix((1.0 / count[cell], (cell, np.arange(n))), shape=(g ** 3, n))
    # pooling is linear: pool the Jacobian's transpose once, then apply each data-space solve (4x fewer rows)
    At = np.concatenate([pool @ A[:, c * n:(c + 1) * n].T.astype(np.float64) for c in range(2)])  # (2 g^3, 3P)
    out = []
    for lam in lambdas:
        D = (w[:, None] * U) @ ((U.T * w[None, :]) / (evals + float(lam) * evals.max())[:, None])   # (3P, 3P)
        out.append((At @ D) * col_scale[None, :])                       # (2 g^3, 3P): mu_a rows, then mu_s'
    op = np.stack(out).reshape(2 * len(lambdas), g ** 3, 3, geometry.n_pairs).transpose(2, 3, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(op.reshape(3, geometry.n_pairs, 2 * len(lambdas), g, g, g),
                                                 dtype=np.float32))


def pair_positions(geometry: Geometry) -> torch.Tensor:
    """(P, 6) source and detector coordinates of each pair, scaled to [-1, 1] by the grid's half width."""
    half = (geometry.grid - 1) / 2 * geometry.voxel_mm
    s, d = geometry.sources_mm / half, geometry.detectors_mm / half
    S, D = len(s), len(d)
    return torch.from_numpy(np.concatenate([np.repeat(s, D, 0), np.tile(d, (S, 1))], 1).astype(np.float32))


class DotSampler:
    """Batches of (features (B, P, 4), relative mu (B, 2, X, Y, Z), body mask) for the trainer."""

    def __init__(self, dataset: DotDataset, train_idx: Sequence[int], val_idx: Sequence[int], scales: Sequence[float],
                 *, sigma_amp: float, sigma_phase_deg: float, subsample_prob: float, subsample_min: float,
                 inclusion_weight: Sequence[float] = (0.0, 0.0), val_seed: int = 12345, val_batch: int = 8):
        self.ds, self.train_idx, self.val_idx = dataset, list(train_idx), list(val_idx)
        self.scales = list(scales)
        self.sigma_amp, self.sigma_phase = float(sigma_amp), float(sigma_phase_deg)
        self.sub_prob, self.sub_min = float(subsample_prob), float(subsample_min)
        self.ref = reference_data(dataset.geometry)
        self.body = torch.from_numpy(dataset.geometry.body_mask.astype(np.float32))[None]
        w = torch.tensor([float(v) for v in inclusion_weight], dtype=torch.float32).reshape(2, 1, 1, 1)
        self._inclusion_w = w if bool(w.any()) else None
        self._val = None
        self.val_seed, self.val_batch = val_seed, val_batch

    def _item(self, i: int, rng: np.random.Generator, augment: bool):
        g = self.ds.geometry
        data, mu, labels = self.ds.data[i], self.ds.mu[i].astype(np.float32), self.ds.labels[i]
        turn = g.quarter_turn() if augment else None
        q = int(rng.integers(4)) if turn is not None else 0
        for _ in range(q):   # exact: the grid and the optode rings map onto themselves
            data, mu = data[:, turn[0]][:, :, turn[1]], np.rot90(mu, 1, axes=(-3, -2))
            labels = np.rot90(labels, 1, axes=(-3, -2))
        data = add_noise(data, rng, self.sigma_amp, self.sigma_phase)
        mask = None
        if augment and rng.random() < self.sub_prob:
            keep = rng.uniform(self.sub_min, 1.0)
            mask = rng.random(data.shape[1:]) < keep
            if not mask.any():
                mask.flat[rng.integers(mask.size)] = True
        x = features(data, self.ref, self.scales, mask)
        y = relative(np.ascontiguousarray(mu), g)
        return torch.from_numpy(x), torch.from_numpy(y), self._weights(labels)

    def _weights(self, labels: np.ndarray) -> torch.Tensor:
        """(1 or 2, X, Y, Z) loss weights in [0, 1]: the body, inclusions up-weighted per channel, rescaled."""
        w = self._inclusion_w
        if w is None:
            return self.body
        inside = torch.from_numpy(np.ascontiguousarray(labels) > 0).float()[None]
        return self.body * (1.0 + w * inside) / (1.0 + w)

    def _batch(self, items) -> Batch:
        xs, ys, ms = zip(*items)
        B = len(xs)
        return Batch(torch.stack(xs), torch.stack(ys), torch.zeros(B, dtype=torch.long), torch.stack(ms))

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        pick = torch.randint(len(self.train_idx), (batch_size,), generator=generator).tolist()
        seed = int(torch.randint(2 ** 62, (1,), generator=generator))
        rng = np.random.default_rng(seed)
        return self._batch([self._item(self.train_idx[k], rng, True) for k in pick])

    def validation_batches(self) -> list[Batch]:
        if self._val is None:
            rng = np.random.default_rng(self.val_seed)
            items = [self._item(i, rng, False) for i in self.val_idx]
            self._val = [self._batch(items[k:k + self.val_batch]) for k in range(0, len(items), self.val_batch)]
        return self._val


def dot_step(model, batch: Batch, ctx, *, channel_weights=(3.0, 1.0)) -> StepOutput:
    """Seed 002's objective: the composite loss per channel (RMSE + SSIM by default), weighted mu_a 3 : mu_s' 1
    (``channel_weights``); ``batch.mask`` holds per-channel voxel weights when inclusions are up-weighted."""
    pred = model(batch.input, batch.cond).float()
    total, terms = 0.0, {}
    wsum = float(sum(channel_weights))
    for c, (w, name) in enumerate(zip(channel_weights, ("mua", "mus"))):
        mask = batch.mask if batch.mask is None or batch.mask.shape[1] == 1 else batch.mask[:, c:c + 1]
        loss, t = ctx.criterion(pred[:, c:c + 1], batch.target[:, c:c + 1], mask)
        total = total + (w / wsum) * loss
        for k, v in t.items():
            terms[k] = terms.get(k, 0.0) + (w / wsum) * v
            terms[f"{k}_{name}"] = v
    images = {} if ctx.training else prediction_previews(batch, pred)
    return StepOutput(total, terms, images)


def make_step(channel_weights):
    return partial(dot_step, channel_weights=tuple(float(w) for w in channel_weights))
