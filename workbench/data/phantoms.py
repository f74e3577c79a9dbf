"""Simulated diffusion-weighted MRI with ground truth.

A brain-like phantom (CSF, grey matter, white matter with curving and crossing
fibre bundles) whose signal follows DIPY's (multi-)tensor model and whose noise
is Rician, as in a single-coil magnitude image. Everything is seeded: the same
arguments give bit-identical arrays, a different seed gives a different
geometry and a different gradient table.

Public names
------------
gradient_scheme(name, seed) -> (bvals, bvecs)
Phantom                      dataclass holding noisy/clean data and ground truth
simulate_dwi(shape, scheme, snr, seed) -> Phantom
write_phantom(phantom, out_dir) -> {name: Path}
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from workbench.data.gradients import SCHEMES, gradient_scheme
from workbench.io_utils import InputError, atomic_path

__all__ = [
    "SCHEMES",
    "TISSUE_LABELS",
    "DIFFUSIVITY",
    "S0_BASE",
    "S0_RELATIVE",
    "VOXEL_SIZE_MM",
    "Phantom",
    "gradient_scheme",
    "simulate_dwi",
    "write_phantom",
    "PHANTOM_FILES",
]

TISSUE_LABELS = {0: "background", 1: "CSF", 2: "GM", 3: "WM"}

#: Base b0 signal (arbitrary scanner units) and relative b0 signal per tissue
#: (T2-weighted b0: CSF brightest, grey matter brighter than white matter).
S0_BASE = 1000.0
S0_RELATIVE = {1: 1.0, 2: 0.8, 3: 0.65}

#: Diffusivities in mm^2/s. WM tensors are cylindrically symmetric
#: (lambda1, lambda2 = lambda3); bundles are more anisotropic than the
#: fanning projection fibres that fill the rest of the white matter.
DIFFUSIVITY = {
    "csf": 3.0e-3,
    "gm": 0.8e-3,
    "wm_bundle": (1.7e-3, 0.3e-3),
    "wm_fan": (1.5e-3, 0.4e-3),
}

VOXEL_SIZE_MM = 2.0



# --------------------------------------------------------------------------- #
# Phantom
# --------------------------------------------------------------------------- #
@dataclass
class Phantom:
    """A simulated DWI data set with its ground truth.

    Attributes
    ----------
    noisy, clean : (X, Y, Z, N) float32
        Rician-noisy magnitude data and the noise-free signal.
    mask : (X, Y, Z) bool
        Brain (CSF + GM + WM).
    tissue : (X, Y, Z) uint8
        0 background, 1 CSF, 2 GM, 3 WM (see ``TISSUE_LABELS``).
    bvals : (N,) float64, bvecs : (N, 3) float64
    affine : (4, 4) float64
        2 mm isotropic voxels, world origin at the centre of the volume.
    sigma : float
        Standard deviation of each of the two Gaussian channels of the Rician
        noise: ``sigma = S0_BASE * S0_RELATIVE[WM] / snr``, i.e. ``snr`` is
        the white-matter b0 signal (without bias field) over sigma.
    snr : float
    n_fibres : (X, Y, Z) uint8
        Number of fibre populations per voxel (0 outside WM, 1, or 2 in the
        crossing regions).
    fibre_dirs : (X, Y, Z, 2, 3) float32
        Unit fibre directions in voxel axes (zeros where absent).
    """

    noisy: np.ndarray
    clean: np.ndarray
    mask: np.ndarray
    tissue: np.ndarray
    bvals: np.ndarray
    bvecs: np.ndarray
    affine: np.ndarray
    sigma: float
    snr: float
    n_fibres: np.ndarray | None = field(default=None, repr=False)
    fibre_dirs: np.ndarray | None = field(default=None, repr=False)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.noisy.shape)

    def __repr__(self) -> str:  # arrays are large; keep the repr short
        return (
            f"Phantom(shape={self.shape}, sigma={self.sigma:.4g}, snr={self.snr:g}, "
            f"n_b0={int(np.sum(self.bvals <= 50))}, mask_voxels={int(self.mask.sum())})"
        )


def _centred_affine(shape: tuple[int, int, int], voxel: float = VOXEL_SIZE_MM) -> np.ndarray:
    aff = np.diag([voxel, voxel, voxel, 1.0])
    aff[:3, 3] = -voxel * (np.asarray(shape[:3], dtype=float) - 1.0) / 2.0
    return aff


def _smooth_field(rng: np.random.Generator, shape, sigma) -> np.ndarray:
    """Zero-mean, unit-std Gaussian random field smoothed with ``sigma`` voxels."""
    f = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="reflect")
    f -= f.mean()
    f /= f.std() + 1e-12
    return f


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def _geometry(shape: tuple[int, int, int], rng: np.random.Generator):
    """Tissue labels, fibre directions and S0 bias field for one seeded brain."""
    shape = tuple(int(s) for s in shape)
    dims = np.asarray(shape, dtype=float)
    jit = lambda scale: float(rng.uniform(-scale, scale))  # noqa: E731

    centre = (dims - 1) / 2 + dims * np.array([jit(0.03), jit(0.03), jit(0.03)])
    axes = dims * np.array([0.42, 0.45, 0.40]) * (1 + np.array([jit(0.05), jit(0.05), jit(0.05)]))
    grid = np.meshgrid(*[np.arange(s, dtype=float) for s in shape], indexing="ij")
    u, v, w = [(g - c) / a for g, c, a in zip(grid, centre, axes)]
    r = np.sqrt(u * u + v * v + w * w)

    # Brain outline with low-frequency jitter, cortical folding at higher frequency.
    outline = _smooth_field(rng, shape, np.maximum(dims / 8, 1.0))
    folds = _smooth_field(rng, shape, np.maximum(dims / 24, 0.8))
    r_eff = r * (1 + 0.05 * outline)
    mask = r_eff <= 1.0

    tissue = np.zeros(shape, np.uint8)
    tissue[mask] = 3
    wm_edge = 0.78 + 0.06 * folds
    tissue[mask & (r_eff > wm_edge)] = 2  # cortical ribbon, folded
    tissue[mask & (r_eff > 0.94 + 0.02 * folds)] = 1  # sulcal / subarachnoid CSF

    def ellipsoid(c, s):
        return ((u - c[0]) / s[0]) ** 2 + ((v - c[1]) / s[1]) ** 2 + ((w - c[2]) / s[2]) ** 2 <= 1.0

    # Deep grey matter (thalamus- and caudate-like blobs), then ventricles on top.
    for side in (-1, 1):
        c = (side * (0.21 + jit(0.03)), -0.12 + jit(0.04), -0.25 + jit(0.04))
        tissue[mask & ellipsoid(c, (0.13 + jit(0.02), 0.17 + jit(0.02), 0.16 + jit(0.02)))] = 2
        c = (side * (0.20 + jit(0.02)), 0.28 + jit(0.04), 0.0 + jit(0.03))
        tissue[mask & ellipsoid(c, (0.09, 0.13 + jit(0.02), 0.14))] = 2
    for side in (-1, 1):
        c = (side * (0.11 + jit(0.02)), 0.04 + jit(0.04), -0.06 + jit(0.03))
        tissue[mask & ellipsoid(c, (0.09 + jit(0.01), 0.34 + jit(0.04), 0.17 + jit(0.02)))] = 1

    # ---- white-matter fibre fields (tangents in normalised coords -> voxel axes)
    wm = tissue == 3
    # Bundle A: left-right arch over the ventricles (corpus-callosum-like),
    # circles about an anterior-posterior axis.
    cu, cw = jit(0.05), -0.55 + jit(0.05)
    ra, ha, la, va = 0.72 + jit(0.04), 0.16, 0.50 + jit(0.05), jit(0.05)
    du, dw = u - cu, w - cw
    rho = np.sqrt(du * du + dw * dw)
    in_a = (np.abs(rho - ra) < ha) & (np.abs(v - va) < la) & (dw > 0.15 * ra)
    dir_a = np.stack([dw, np.zeros_like(dw), -du], axis=-1)
    # Bundles B: anterior-posterior arches, one per hemisphere (cingulum-like),
    # circles about a left-right axis.
    ub, cv, cw = 0.32 + jit(0.04), jit(0.05), -0.50 + jit(0.05)
    rb, hb, wb = 0.70 + jit(0.04), 0.12, 0.12
    dv, dw = v - cv, w - cw
    rho = np.sqrt(dv * dv + dw * dw)
    in_b = (np.abs(rho - rb) < hb) & (np.abs(np.abs(u) - ub) < wb) & (dw > 0.1 * rb)
    dir_b = np.stack([np.zeros_like(dv), dw, -dv], axis=-1)
    # Fan: projection fibres radiating from below the brain (corona-radiata-like).
    fan_origin = np.array([jit(0.1), jit(0.1), -1.6 + jit(0.1)])
    dir_fan = np.stack([u - fan_origin[0], v - fan_origin[1], w - fan_origin[2]], axis=-1)

    to_vox = axes[None, None, None, :]
    dir_a, dir_b, dir_fan = (_unit(d * to_vox) for d in (dir_a, dir_b, dir_fan))

    in_a &= wm
    in_b &= wm
    n_fibres = np.zeros(shape, np.uint8)
    n_fibres[wm] = 1
    n_fibres[in_a & in_b] = 2
    fibre_dirs = np.zeros(shape + (2, 3), np.float32)
    first = np.where(in_a[..., None], dir_a, np.where(in_b[..., None], dir_b, dir_fan))
    fibre_dirs[..., 0, :] = np.where(wm[..., None], first, 0.0)
    fibre_dirs[..., 1, :] = np.where((in_a & in_b)[..., None], dir_b, 0.0)
    bundle = in_a | in_b  # bundle tensors vs fan tensors

    # Mild smooth receive-coil bias field (about +-10 %).
    coef = rng.uniform(-0.05, 0.05, size=6)
    bias = 1.0 + coef[0] * u + coef[1] * v + coef[2] * w + coef[3] * u * v + coef[4] * (u * u - v * v) + coef[5] * w * w
    bias = np.clip(bias, 0.8, 1.2)
    return tissue, mask, n_fibres, fibre_dirs, bundle, bias


def _tensor_attenuation(dirs: np.ndarray, bvals: np.ndarray, bvecs: np.ndarray, l1: float, l2: float) -> np.ndarray:
    """exp(-b g^T D g) for cylindrical tensors with principal axis ``dirs`` (V, 3).

    With D = l2 I + (l1 - l2) e e^T and unit g: g^T D g = l2 + (l1 - l2) (g.e)^2;
    b0 rows (g = 0, b = 0) give 1. Same as :func:`dipy.sims.voxel.single_tensor`
    with evals (l1, l2, l2), vectorised over voxels.
    """
    cos2 = (dirs @ bvecs.T) ** 2
    return np.exp(-bvals[None, :] * (l2 + (l1 - l2) * cos2))


def simulate_dwi(
    shape: tuple[int, int, int] = (64, 64, 32),
    scheme: str = "multishell",
    snr: float = 20.0,
    seed: int = 0,
) -> Phantom:
    """Simulate a brain-like DWI phantom with Rician noise.

    Geometry (seeded): a jittered ellipsoidal brain with a folded cortical
    grey-matter ribbon under a thin CSF layer, two CSF ventricles, four deep
    grey-matter blobs, and white matter holding a left-right arch bundle, two
    anterior-posterior arch bundles that cross it (two-fibre voxels, equal
    volume fractions) and fanning projection fibres elsewhere.

    Signal: ``S = S0 * bias * sum_k f_k exp(-b g^T D_k g)`` — DIPY's
    multi-tensor model (:func:`dipy.sims.voxel.multi_tensor`) evaluated in
    closed form for all voxels at once. WM tensors have eigenvalues
    (1.7, 0.3, 0.3)e-3 mm^2/s in bundles and (1.5, 0.4, 0.4)e-3 in the fan;
    GM is isotropic 0.8e-3, CSF isotropic 3.0e-3. S0 = 1000 x (CSF 1.0,
    GM 0.8, WM 0.65) x a smooth bias field within +-20 %; background is 0.

    Noise: Rician everywhere, air included,
    ``noisy = sqrt((clean + n1)^2 + n2^2)`` with n1, n2 ~ N(0, sigma^2) and
    ``sigma = 1000 * 0.65 / snr`` (``snr`` = WM b0 signal over sigma).

    Parameters
    ----------
    shape : (X, Y, Z)
    scheme : {"multishell", "dti"}
        See :func:`gradient_scheme`.
    snr : float
        Must be > 0.
    seed : int
        Seeds geometry, gradient table and noise.

    Returns
    -------
    Phantom
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 4:
        raise ValueError(f"shape must be three sizes >= 4, got {shape}")
    if not snr > 0:
        raise ValueError(f"snr must be > 0, got {snr}")
    bvals, bvecs = gradient_scheme(scheme, seed=seed)
    geo_ss, noise_ss = np.random.SeedSequence([int(seed), 0x7068616E]).spawn(2)
    tissue, mask, n_fibres, fibre_dirs, bundle, bias = _geometry(shape, np.random.default_rng(geo_ss))

    n_vol = bvals.size
    clean = np.zeros(shape + (n_vol,), np.float32)
    s0 = np.zeros(shape)
    for label, rel in S0_RELATIVE.items():
        s0[tissue == label] = S0_BASE * rel
    s0 *= bias

    for label, d in ((1, DIFFUSIVITY["csf"]), (2, DIFFUSIVITY["gm"])):
        sel = tissue == label
        clean[sel] = s0[sel][:, None] * np.exp(-bvals * d)[None, :]

    wm = tissue == 3
    for sel_bundle, (l1, l2) in ((True, DIFFUSIVITY["wm_bundle"]), (False, DIFFUSIVITY["wm_fan"])):
        sel = wm & (bundle == sel_bundle)
        if not sel.any():
            continue
        nf = n_fibres[sel]
        dirs = fibre_dirs[sel].astype(np.float64)
        att = _tensor_attenuation(dirs[:, 0], bvals, bvecs, l1, l2)
        two = nf == 2
        if two.any():
            att[two] = 0.5 * att[two] + 0.5 * _tensor_attenuation(dirs[two, 1], bvals, bvecs, l1, l2)
        clean[sel] = s0[sel][:, None] * att

    sigma = float(S0_BASE * S0_RELATIVE[3] / snr)
    rng = np.random.default_rng(noise_ss)
    n1 = rng.standard_normal(clean.shape, dtype=np.float32)
    n1 *= np.float32(sigma)
    n1 += clean
    np.square(n1, out=n1)
    n2 = rng.standard_normal(clean.shape, dtype=np.float32)
    n2 *= np.float32(sigma)
    np.square(n2, out=n2)
    n1 += n2
    del n2
    noisy = np.sqrt(n1, out=n1)

    return Phantom(
        noisy=noisy,
        clean=clean,
        mask=mask,
        tissue=tissue,
        bvals=bvals,
        bvecs=bvecs,
        affine=_centred_affine(shape),
        sigma=sigma,
        snr=float(snr),
        n_fibres=n_fibres,
        fibre_dirs=fibre_dirs,
    )


# --------------------------------------------------------------------------- #
# Writing
# --------------------------------------------------------------------------- #
PHANTOM_FILES = {
    "dwi": "dwi.nii.gz",
    "bval": "dwi.bval",
    "bvec": "dwi.bvec",
    "clean": "clean.nii.gz",
    "mask": "mask.nii.gz",
    "tissue": "tissue.nii.gz",
}


def write_phantom(phantom: Phantom, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write a phantom as NIfTI + FSL bval/bvec files, each file atomically.

    Files: ``dwi.nii.gz`` (noisy, float32), ``dwi.bval`` (one row),
    ``dwi.bvec`` (3 rows x N columns), ``clean.nii.gz`` (float32),
    ``mask.nii.gz`` (uint8), ``tissue.nii.gz`` (uint8), all with the
    phantom's affine. The noise sigma and SNR are also recorded in the NIfTI
    ``descrip`` header field of the two DWI images.

    Raises
    ------
    InputError
        If any target file already exists; nothing is written in that case.

    Returns
    -------
    dict
        ``{"dwi", "bval", "bvec", "clean", "mask", "tissue"}`` -> path.
    """
    import nibabel as nib

    out_dir = Path(out_dir)
    paths = {k: out_dir / name for k, name in PHANTOM_FILES.items()}
    existing = [p for p in paths.values() if p.exists()]
    if existing:
        raise InputError(
            f"{existing[0]} already exists; refusing to overwrite it. "
            f"Write the phantom to another folder (e.g. {out_dir}_new) or remove the old files first."
        )

    affine = np.asarray(phantom.affine, dtype=np.float64)
    descrip = f"workbench phantom sigma={phantom.sigma:.6g} snr={phantom.snr:g}"

    def save(key: str, data: np.ndarray, dtype, note: str | None = None) -> None:
        img = nib.Nifti1Image(np.asarray(data, dtype=dtype), affine)
        img.header.set_xyzt_units("mm", "sec")
        img.header.set_data_dtype(dtype)
        if note:
            img.header["descrip"] = note.encode()[:79]
        with atomic_path(paths[key]) as tmp:
            nib.save(img, tmp)

    save("dwi", phantom.noisy, np.float32, descrip)
    with atomic_path(paths["bval"]) as tmp:
        np.savetxt(tmp, np.asarray(phantom.bvals, dtype=float)[None, :], fmt="%.10g")
    with atomic_path(paths["bvec"]) as tmp:
        np.savetxt(tmp, np.asarray(phantom.bvecs, dtype=float).T, fmt="%.10f")
    save("clean", phantom.clean, np.float32, descrip)
    save("mask", phantom.mask, np.uint8)
    save("tissue", phantom.tissue, np.uint8)
    return paths
