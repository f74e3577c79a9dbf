"""Seeded diffusion gradient tables for the simulated DWI phantoms (b-values and directions).

Directions per shell come from electrostatic repulsion on the hemisphere (DIPY's
``disperse_charges``; Jones, Horsfield & Simmons 1999), seeded, so different seeds give
different, equally well spread tables. Split out of :mod:`workbench.data.phantoms`.
"""

from __future__ import annotations

import functools

import numpy as np

# name -> (number of b0 volumes, [(b-value, number of directions), ...])
SCHEMES: dict[str, tuple[int, list[tuple[float, int]]]] = {
    "multishell": (5, [(1000.0, 30), (2000.0, 30)]),
    "dti": (2, [(1000.0, 20)]),
}

_DISPERSE_ITERS = 1000


# --------------------------------------------------------------------------- #
# Gradient tables
# --------------------------------------------------------------------------- #
def _shell_directions(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` well-spread unit vectors: electrostatic repulsion on the hemisphere."""
    from dipy.core.sphere import HemiSphere, disperse_charges

    xyz = rng.standard_normal((n, 3))
    xyz /= np.linalg.norm(xyz, axis=1, keepdims=True)
    hemi, _ = disperse_charges(HemiSphere(xyz=xyz), _DISPERSE_ITERS)
    v = np.asarray(hemi.vertices, dtype=np.float64)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def gradient_scheme(name: str = "multishell", seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Build a seeded gradient table.

    Parameters
    ----------
    name : {"multishell", "dti"}
        ``"multishell"``: 5 b0 + 30 directions at b=1000 + 30 at b=2000 s/mm^2
        (65 volumes). ``"dti"``: 2 b0 + 20 directions at b=1000 (22 volumes).
    seed : int
        Seeds the random starting points of the charge repulsion
        (:func:`dipy.core.sphere.disperse_charges`), so different seeds give
        different (equally well spread) direction sets. Each shell gets its
        own set.

    Returns
    -------
    bvals : (N,) float64
    bvecs : (N, 3) float64
        Unit vectors; b0 rows are (0, 0, 0). The b0 volumes are interleaved
        through the series as scanners do: volume 0 and then every
        ``N // n_b0`` volumes. Shells follow each other in increasing b.
    """
    if name not in SCHEMES:
        raise ValueError(f"unknown gradient scheme {name!r}; known: {sorted(SCHEMES)}")
    bvals, bvecs = _gradient_scheme_cached(name, int(seed))
    return bvals.copy(), bvecs.copy()


@functools.lru_cache(maxsize=32)
def _gradient_scheme_cached(name: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    n_b0, shells = SCHEMES[name]
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x67726164]))
    dw_bvals, dw_bvecs = [], []
    for b, n in shells:
        dw_bvals.append(np.full(n, b))
        dw_bvecs.append(_shell_directions(n, rng))
    dw_bvals = np.concatenate(dw_bvals)
    dw_bvecs = np.concatenate(dw_bvecs)

    n_total = n_b0 + dw_bvals.size
    b0_pos = [(i * n_total) // n_b0 for i in range(n_b0)]
    bvals = np.zeros(n_total)
    bvecs = np.zeros((n_total, 3))
    dw_pos = np.setdiff1d(np.arange(n_total), b0_pos)
    bvals[dw_pos] = dw_bvals
    bvecs[dw_pos] = dw_bvecs
    return bvals, bvecs
