"""Frequency-domain diffusion of near-infrared light in tissue: forward model and Jacobian.

The photon fluence ``Phi`` (per unit source power) of an intensity-modulated point
source obeys the frequency-domain diffusion equation

    -div(D grad Phi) + (mu_a + i omega / c) Phi = q,      D = 1 / (3 mu_s')

inside the tissue body, with the Robin (partial-current) boundary condition
``Phi + 2 A D dPhi/dn = 0`` on its surface (Haskell et al., JOSA A 11(10), 1994; the
diffusion coefficient independent of mu_a as argued by Durduran et al., Rep. Prog.
Phys. 73, 2010). ``A = (1 + R_eff) / (1 - R_eff)`` with R_eff from the refractive index
mismatch (Groenhuis et al., Appl. Opt. 22, 1983).

It is discretised by cell-centred finite volumes on the voxel grid of the reconstruction
(the grid the NIfTI output uses), so no mesh and no interpolation sit between the model
and the images: interior faces carry the harmonic-mean conductance ``2 D_i D_j / (h (D_i + D_j))``,
faces on the body surface the series conductance of half a voxel and the Robin layer,
``1 / (h / (2 D_i) + 2 A)``. The matrix is complex symmetric, so source-detector
reciprocity holds exactly; one sparse LU factorisation (SuperLU through scipy) serves
every source and every detector (adjoint) field. A hand-written assembly because the
voxel grid is the unknown of the inverse problem: a tetrahedral FEM (e.g. scikit-fem)
would need a mesh-to-voxel map in both directions for every Jacobian.

The Jacobian of the complex boundary data with respect to voxel mu_a and mu_s' is the
adjoint-method one (Arridge, Inverse Problems 15, 1999): with ``M Phi_s = e_s`` and
``m_sd = e_d^T Phi_s``, ``dm_sd / dp = -Phi_d^T (dM / dp) Phi_s``, exact for this
discretisation (tested against finite differences).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from functools import cached_property

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

C_VACUUM_MM_PER_S = 2.99792458e11


def serial_blas():
    """Context limiting BLAS to one thread around the sparse solves.

    SuperLU makes many tiny BLAS calls; with a multi-threaded OpenBLAS on a busy (shared,
    oversubscribed) machine each pays a thread hand-off: one 140 MHz factorisation at
    grid 16 was measured at ~10 s instead of 0.03 s. Parallelism comes from processes
    (one case per core: :func:`workbench.tasks.dot.data.simulate_dataset`).
    """
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def effective_reflection(n: float) -> float:
    """R_eff of a tissue/air boundary for refractive index ``n`` (Groenhuis et al. 1983 fit)."""
    return -1.440 / n ** 2 + 0.710 / n + 0.668 + 0.0636 * n


@dataclass(frozen=True)
class Geometry:
    """A tissue body on a voxel grid, with sources and detectors on its surface.

    The grid is ``grid`` voxels per axis of ``voxel_mm``, centred on the origin (the
    NIfTI affine: :meth:`affine`). ``body`` is a cylinder along z (``radii_mm`` = x and y
    radii, half height) or an ellipsoid (three semi-axes). Optodes sit on ``rings`` rings
    around z, alternating source and detector every ``360 / (2 * per_ring)`` degrees and
    rotated by half a step from ring to ring; every source pairs with every detector.
    """

    grid: int = 32
    voxel_mm: float = 2.0
    body: str = "cylinder"
    radii_mm: tuple[float, float, float] = (28.0, 28.0, 28.0)
    rings: int = 4
    per_ring: int = 4
    ring_span_mm: float = 36.0
    frequency_hz: float = 140e6
    refractive_index: float = 1.4
    background: tuple[float, float] = (0.01, 1.0)

    def __post_init__(self):
        if self.body not in ("cylinder", "ellipsoid"):
            raise ValueError(f"unknown body {self.body!r}; known: cylinder, ellipsoid")
        half = (self.grid - 1) / 2 * self.voxel_mm
        if self.grid < 8 or max(self.radii_mm) > half:
            raise ValueError(f"a body of radii {self.radii_mm} mm does not fit a {self.grid}^3 grid of "
                             f"{self.voxel_mm} mm voxels (half width {half} mm)")

    # -- the grid ---------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.grid,) * 3

    def affine(self) -> np.ndarray:
        """Voxel -> mm (RAS), origin at the grid centre."""
        aff = np.diag([self.voxel_mm] * 3 + [1.0])
        aff[:3, 3] = -(self.grid - 1) / 2 * self.voxel_mm
        return aff

    def coordinates(self) -> np.ndarray:
        """(3, X, Y, Z) voxel-centre coordinates in mm."""
        c = (np.arange(self.grid) - (self.grid - 1) / 2) * self.voxel_mm
        return np.stack(np.meshgrid(c, c, c, indexing="ij"))

    def _inside(self, xyz: np.ndarray) -> np.ndarray:
        rx, ry, rz = self.radii_mm
        x, y, z = xyz
        if self.body == "cylinder":
            return (x / rx) ** 2 + (y / ry) ** 2 <= 1.0 + 1e-9, np.abs(z) <= rz + 1e-9
        return ((x / rx) ** 2 + (y / ry) ** 2 + (z / rz) ** 2 <= 1.0 + 1e-9), True

    @cached_property
    def body_mask(self) -> np.ndarray:
        a, b = self._inside(self.coordinates())
        return np.asarray(a & b, bool)

    # -- the optodes ------------------------------------------------------------------
    def _ring_positions(self, kind: int) -> np.ndarray:
        rx, ry, rz = self.radii_mm
        zs = np.linspace(-self.ring_span_mm / 2, self.ring_span_mm / 2, self.rings) if self.rings > 1 else [0.0]
        out = []
        step = 2 * np.pi / (2 * self.per_ring)
        for r, z in enumerate(zs):
            for k in range(self.per_ring):
                phi = (2 * k + kind) * step + r * step / 2
                if self.body == "cylinder":
                    out.append((rx * np.cos(phi), ry * np.sin(phi), z))
                else:
                    s = np.sqrt(max(1 - (z / rz) ** 2, 0.0))
                    out.append((rx * s * np.cos(phi), ry * s * np.sin(phi), z))
        return np.asarray(out, float)

    @cached_property
    def sources_mm(self) -> np.ndarray:
        """(S, 3) source positions on the surface, mm."""
        return self._ring_positions(0)

    @cached_property
    def detectors_mm(self) -> np.ndarray:
        """(D, 3) detector positions on the surface, mm."""
        return self._ring_positions(1)

    def optode_voxels(self, positions_mm: np.ndarray) -> np.ndarray:
        """Index (into the flattened body voxels) of the body voxel nearest to each position."""
        coords = self.coordinates().reshape(3, -1)[:, self.body_mask.ravel()]
        d2 = ((coords.T[None] - positions_mm[:, None]) ** 2).sum(-1)
        return d2.argmin(1)

    def quarter_turn(self) -> "tuple[np.ndarray, np.ndarray] | None":
        """Index arrays ``(src, det)`` such that the data of a phantom turned by +90 degrees about z
        (``np.rot90(mu, 1, axes=(-3, -2))``) are ``data[..., src, :][..., det]``; None when the geometry
        is not symmetric under that turn (x and y radii differ, or optodes per ring not a multiple of 4).

        A quarter turn maps the voxel grid onto itself and each ring's optodes onto the next ones,
        so training may turn phantoms and permute their data exactly (4x the phantoms).
        """
        if self.radii_mm[0] != self.radii_mm[1] or self.per_ring % 4:
            return None
        idx = np.arange(self.rings * self.per_ring).reshape(self.rings, self.per_ring)
        inv = np.roll(idx, self.per_ring // 4, axis=1).ravel()   # optode k now sees what optode k - per_ring/4 saw
        return inv, inv

    @property
    def n_pairs(self) -> int:
        return len(self.sources_mm) * len(self.detectors_mm)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["radii_mm"], d["background"] = list(self.radii_mm), list(self.background)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Geometry":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown geometry keys {sorted(unknown)}; known: {sorted(known)}")
        d = dict(d)
        for k in ("radii_mm", "background"):
            if k in d:
                d[k] = tuple(float(v) for v in d[k])
        return cls(**d)

    def key(self) -> str:
        """A short hash naming this geometry (checkpoints and caches record it)."""
        return hashlib.sha1(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:12]


def default_geometry(grid: int = 32) -> Geometry:
    """The built-in geometry: a 56 mm cylinder, 16 sources and 16 detectors on 4 rings.

    Smaller grids keep the body size and coarsen the voxels (``grid=16``: 4 mm voxels).
    """
    return Geometry(grid=grid, voxel_mm=64.0 / grid)


# ----------------------------------------------------------------------------- the operator
@dataclass
class _Faces:
    """Voxel pairs sharing a face (interior) and voxels with a face on the surface."""

    i: np.ndarray   # interior faces: body-voxel indices of both sides
    j: np.ndarray
    b: np.ndarray   # surface faces: the body voxel (repeated once per surface face)


def _faces(mask: np.ndarray) -> _Faces:
    index = -np.ones(mask.shape, np.int64)
    index[mask] = np.arange(int(mask.sum()))
    padded = np.pad(index, 1, constant_values=-1)
    ii, jj, bb = [], [], []
    core = padded[1:-1, 1:-1, 1:-1]
    for axis in range(3):
        for shift in (-1, 1):
            sl = [slice(1, -1)] * 3
            sl[axis] = slice(1 + shift, padded.shape[axis] - 1 + shift)
            nb = padded[tuple(sl)]
            inside = core >= 0
            bb.append(core[inside & (nb < 0)])
            if shift == 1:  # each interior face once
                both = inside & (nb >= 0)
                ii.append(core[both])
                jj.append(nb[both])
    return _Faces(np.concatenate(ii), np.concatenate(jj), np.concatenate(bb))


@dataclass
class ForwardModel:
    """The discretised diffusion operator of one geometry, for one set of optical properties.

    ``mu_a``, ``mu_s`` are (X, Y, Z) arrays in 1/mm (values outside the body are ignored).
    """

    geometry: Geometry
    mu_a: np.ndarray
    mu_s: np.ndarray
    _lu: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        g = self.geometry
        m = g.body_mask
        self.mu_a = np.asarray(self.mu_a, float)
        self.mu_s = np.asarray(self.mu_s, float)
        if self.mu_a.shape != g.shape or self.mu_s.shape != g.shape:
            raise ValueError(f"optical properties have shape {self.mu_a.shape}/{self.mu_s.shape}; "
                             f"the geometry's grid is {g.shape}")
        a, s = self.mu_a[m], self.mu_s[m]
        if not (np.all(np.isfinite(a)) and np.all(np.isfinite(s)) and a.min() >= 0 and s.min() > 0):
            raise ValueError("mu_a must be >= 0 and mu_s' > 0 (1/mm) and finite inside the body")
        self.faces = _faces(m)
        self.a = a
        self.D = 1.0 / (3.0 * s)
        self.A = (1 + effective_reflection(g.refractive_index)) / (1 - effective_reflection(g.refractive_index))
        self.n = int(m.sum())
        self.src = g.optode_voxels(g.sources_mm)
        self.det = g.optode_voxels(g.detectors_mm)

    # conductances (per unit face area) and their derivatives with respect to D
    def _g_int(self):
        h, Di, Dj = self.geometry.voxel_mm, self.D[self.faces.i], self.D[self.faces.j]
        g = 2 * Di * Dj / (h * (Di + Dj))
        return g, 2 * Dj ** 2 / (h * (Di + Dj) ** 2), 2 * Di ** 2 / (h * (Di + Dj) ** 2)

    def _g_surf(self):
        h, Db = self.geometry.voxel_mm, self.D[self.faces.b]
        denom = h / (2 * Db) + 2 * self.A
        return 1.0 / denom, (h / (2 * Db ** 2)) / denom ** 2

    def matrix(self, frequency_hz: float) -> sp.csc_matrix:
        """``M = h^2 (surface + face conductances) + h^3 diag(mu_a + i omega / c)``; ``M Phi = e_source``."""
        h = self.geometry.voxel_mm
        f = self.faces
        g, _, _ = self._g_int()
        gb, _ = self._g_surf()
        k = 2 * np.pi * frequency_hz * self.geometry.refractive_index / C_VACUUM_MM_PER_S
        diag = h ** 3 * (self.a + 1j * k) if frequency_hz else h ** 3 * self.a.astype(complex)
        diag = diag + h ** 2 * (np.bincount(f.i, g, self.n) + np.bincount(f.j, g, self.n)
                                + np.bincount(f.b, gb, self.n))
        rows = np.concatenate([np.arange(self.n), f.i, f.j])
        cols = np.concatenate([np.arange(self.n), f.j, f.i])
        vals = np.concatenate([diag, -h ** 2 * g, -h ** 2 * g])
        if not frequency_hz:
            vals = vals.real
        return sp.csc_matrix((vals, (rows, cols)), shape=(self.n, self.n))

    def _factor(self, frequency_hz: float):
        if frequency_hz not in self._lu:
            with serial_blas():
                # minimum-degree ordering on A + A^T and diagonal pivots: the matrix is complex
                # symmetric with a positive-definite real part (6x faster than COLAMD + pivoting)
                self._lu[frequency_hz] = spla.splu(self.matrix(frequency_hz), permc_spec="MMD_AT_PLUS_A",
                                                   diag_pivot_thresh=0.0, options={"SymmetricMode": True})
        return self._lu[frequency_hz]

    def fields(self, frequency_hz: float, which: str = "sources") -> np.ndarray:
        """(N_body, S) source fields or (N_body, D) detector (adjoint) fields."""
        idx = self.src if which == "sources" else self.det
        rhs = np.zeros((self.n, len(idx)), complex if frequency_hz else float)
        rhs[idx, np.arange(len(idx))] = 1.0
        lu = self._factor(frequency_hz)
        with serial_blas():
            return lu.solve(rhs)

    def measurements(self, frequencies=None) -> np.ndarray:
        """(F, S, D) complex fluence at each detector for each source and frequency (default: 0 and f_mod)."""
        freqs = (0.0, self.geometry.frequency_hz) if frequencies is None else tuple(frequencies)
        return np.stack([self.fields(f, "sources")[self.det].T.astype(complex) for f in freqs])

    def jacobian(self, frequency_hz: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(m, J_mua, J_mus)``: data (S, D) and its derivatives (S, D, N_body) w.r.t. voxel mu_a and mu_s'."""
        h = self.geometry.voxel_mm
        f = self.faces
        ps = self.fields(frequency_hz, "sources")          # (N, S)
        pd = self.fields(frequency_hz, "detectors")        # (N, D)
        m = ps[self.det].T                                  # (S, D)
        j_mua = -h ** 3 * np.einsum("ns,nd->sdn", ps, pd)
        _, dgi, dgj = self._g_int()
        _, dgb = self._g_surf()
        gs, gd = ps[f.i] - ps[f.j], pd[f.i] - pd[f.j]       # (F, S), (F, D)
        prod = (gs[:, :, None] * gd[:, None, :]).reshape(len(f.i), -1)
        nf, nb = len(f.i), len(f.b)
        scatter = sp.csr_matrix((np.concatenate([dgi, dgj]), (np.concatenate([f.i, f.j]),
                                 np.concatenate([np.arange(nf), np.arange(nf)]))), shape=(self.n, nf))
        j_d = scatter @ prod
        surf = (ps[f.b][:, :, None] * pd[f.b][:, None, :]).reshape(nb, -1)
        j_d += sp.csr_matrix((dgb, (f.b, np.arange(nb))), shape=(self.n, nb)) @ surf
        j_d = -h ** 2 * j_d.T.reshape(m.shape + (self.n,))
        j_mus = j_d * (-3.0 * self.D ** 2)                  # dD/dmu_s' = -3 D^2
        return m, j_mua, j_mus


def simulate_measurements(geometry: Geometry, mu: np.ndarray) -> np.ndarray:
    """(2, S, D) complex boundary data (CW, modulated) of an optical-property volume ``mu`` (2, X, Y, Z)."""
    return ForwardModel(geometry, mu[0], mu[1]).measurements()


def homogeneous(geometry: Geometry, background=None) -> np.ndarray:
    """(2, X, Y, Z) volume of the background optical properties."""
    mua, mus = geometry.background if background is None else background
    return np.stack([np.full(geometry.shape, float(mua)), np.full(geometry.shape, float(mus))])


def infinite_medium_green(r_mm: np.ndarray, mu_a: float, mu_s: float, frequency_hz: float = 0.0,
                          refractive_index: float = 1.4) -> np.ndarray:
    """Fluence ``exp(-k r) / (4 pi D r)`` of a unit point source in an infinite medium, ``k^2 = (mu_a + i w/c) / D``.

    (Fishkin & Gratton, JOSA A 10(1), 1993.)
    """
    D = 1.0 / (3.0 * mu_s)
    k = np.sqrt((mu_a + 1j * 2 * np.pi * frequency_hz * refractive_index / C_VACUUM_MM_PER_S) / D)
    return np.exp(-k * r_mm) / (4 * np.pi * D * r_mm)
