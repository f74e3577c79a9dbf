"""Procedural optical phantoms: a tissue body with smooth heterogeneity and 1-3 inclusions.

Seed 002's phantoms (background mu_a 0.01 / mu_s' 1.0 per mm, a tumour of 0.02 / 0.8 per
mm, 5-15 mm) widened so a network cannot learn one contrast: each inclusion is an
absorber only, a scatterer only or both (so the two channels can be told apart), with
mu_a x1.5-3 and mu_s' x0.6-0.85 or x1.2-1.5; the background varies smoothly by up to
about +-10% in each channel independently.

torchio's pattern: :func:`sample_phantom_params` draws every random number from a
``numpy.random.Generator``; :func:`render_phantom` is deterministic in those
parameters (a JSON-able dict stored with each case).
"""

from __future__ import annotations

import numpy as np

from workbench.tasks.dot.physics import Geometry

KINDS = ("mua", "mus", "both")
DIAMETER_MM = (5.0, 15.0)
MUA_FACTOR = (1.5, 3.0)
MUS_FACTOR_LOW = (0.6, 0.85)
MUS_FACTOR_HIGH = (1.2, 1.5)
HETEROGENEITY = 0.10  # peak relative amplitude of the smooth background variation per channel
N_WAVES = 4


def sample_phantom_params(rng: np.random.Generator, geometry: Geometry, n_inclusions: int | None = None) -> dict:
    """Random phantom parameters: background waves and 1-3 non-overlapping spherical inclusions."""
    waves = []
    for _channel in range(2):
        k = rng.normal(size=(N_WAVES, 3))
        k *= (rng.uniform(1 / 60, 1 / 25, size=N_WAVES) / np.linalg.norm(k, axis=1))[:, None]  # cycles per mm
        amp = rng.uniform(0, 1, N_WAVES)
        amp *= HETEROGENEITY / max(amp.sum(), 1e-9)
        waves.append({"k": k.tolist(), "phase": rng.uniform(0, 2 * np.pi, N_WAVES).tolist(), "amp": amp.tolist()})
    n = int(rng.integers(1, 4)) if n_inclusions is None else int(n_inclusions)
    coords = geometry.coordinates().reshape(3, -1).T
    inside = coords[geometry.body_mask.ravel()]
    inclusions = []
    for _ in range(200):
        if len(inclusions) == n:
            break
        radius = rng.uniform(*DIAMETER_MM) / 2
        centre = inside[rng.integers(len(inside))]
        if _depth(geometry, centre) < radius + 2.0:
            continue
        if any(np.linalg.norm(centre - np.asarray(o["centre_mm"])) < radius + o["radius_mm"] + 2.0 for o in inclusions):
            continue
        kind = KINDS[int(rng.integers(3))]
        f_mua = rng.uniform(*MUA_FACTOR) if kind in ("mua", "both") else 1.0
        if kind in ("mus", "both"):
            f_mus = rng.uniform(*(MUS_FACTOR_LOW if rng.random() < 0.5 else MUS_FACTOR_HIGH))
        else:
            f_mus = 1.0
        inclusions.append({"centre_mm": centre.tolist(), "radius_mm": float(radius), "kind": kind,
                           "mua_factor": float(f_mua), "mus_factor": float(f_mus)})
    return {"background": list(geometry.background), "waves": waves, "inclusions": inclusions}


def _depth(geometry: Geometry, p: np.ndarray) -> float:
    """Approximate distance (mm) from a point inside the body to its surface."""
    rx, ry, rz = geometry.radii_mm
    x, y, z = p
    if geometry.body == "cylinder":
        r = np.hypot(x / rx, y / ry)
        return float(min((1 - r) * min(rx, ry), rz - abs(z)))
    return float((1 - np.sqrt((x / rx) ** 2 + (y / ry) ** 2 + (z / rz) ** 2)) * min(rx, ry, rz))


def render_phantom(params: dict, geometry: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """``(mu (2, X, Y, Z) float32 in 1/mm, labels (X, Y, Z) int16)`` of a phantom's parameters.

    Inclusion edges are partial-volume weighted (a linear ramp one voxel wide), so a
    5 mm sphere on a 2 mm grid is not a staircase; ``labels`` marks voxels at least half
    inside inclusion ``i`` (1-based). Outside the body both channels hold the background.
    """
    xyz = geometry.coordinates()
    mua0, mus0 = params["background"]
    fields = []
    for base, w in zip((mua0, mus0), params["waves"]):
        k, ph, amp = np.asarray(w["k"]), np.asarray(w["phase"]), np.asarray(w["amp"])
        arg = 2 * np.pi * np.einsum("wc,cxyz->wxyz", k, xyz) + ph[:, None, None, None]
        fields.append(base * (1 + np.einsum("w,wxyz->xyz", amp, np.cos(arg))))
    mua, mus = fields
    labels = np.zeros(geometry.shape, np.int16)
    h = geometry.voxel_mm
    for i, inc in enumerate(params["inclusions"], start=1):
        d = np.linalg.norm(xyz - np.asarray(inc["centre_mm"])[:, None, None, None], axis=0)
        frac = np.clip(0.5 - (d - inc["radius_mm"]) / h, 0.0, 1.0)
        mua = mua * (1 + frac * (inc["mua_factor"] - 1))
        mus = mus * (1 + frac * (inc["mus_factor"] - 1))
        labels[frac >= 0.5] = i
    body = geometry.body_mask
    mu = np.stack([np.where(body, mua, mua0), np.where(body, mus, mus0)]).astype(np.float32)
    return mu, np.where(body, labels, 0).astype(np.int16)


def simulate_phantom(seed: int, geometry: Geometry) -> tuple[np.ndarray, np.ndarray, dict]:
    """A seeded phantom: ``(mu, labels, params)``."""
    params = sample_phantom_params(np.random.default_rng(seed), geometry)
    mu, labels = render_phantom(params, geometry)
    return mu, labels, params
