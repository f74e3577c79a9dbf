"""Measurement files, simulated cases and the cached dataset of the `dot` task.

Measurement file (``measurements.npz``, format ``workbench-dot/1``): NumPy ``.npz`` with

============== ============ ===========================================================
key            shape        meaning
============== ============ ===========================================================
format         ()           the string ``"workbench-dot/1"``
frequencies_hz (F,)         modulation frequencies; 0 = continuous wave (CW)
amplitude      (F, S, D)    detected amplitude for source s and detector d, > 0, per unit
                            source power (fluence, 1/mm^2) or any unit calibrated the same
                            way for every pair (the data are used as log-ratios to a
                            homogeneous reference, so a global factor cancels only when it
                            is the same as the reference's: see below)
phase_rad      (F, S, D)    phase of the detected wave relative to the source, radians
                            (negative = delay); CW rows are 0
sources_mm     (S, 3)       source positions, mm, in the frame of the output NIfTI's affine
detectors_mm   (D, 3)       detector positions, mm
mask           (S, D) bool  optional: False where a pair was not measured
geometry       ()           optional: JSON of :class:`~workbench.tasks.dot.physics.Geometry`
============== ============ ===========================================================

Reconstructions work on Rytov data: log-amplitude and phase differences to the
homogeneous medium of the geometry's background optical properties, computed by the
same forward model. Instrument data must therefore be calibrated to absolute fluence
(or their reference-phantom ratio multiplied by the model's reference).

A simulated case is a folder ``case_000/`` with ``measurements.npz`` (noise-free),
``mu.nii.gz`` (X, Y, Z, 2: mu_a, mu_s' in 1/mm; affine in mm), ``labels.nii.gz`` (the
inclusions) and ``params.json``. Noise is added when the data are loaded (levels in the
config), so one cache serves every noise level. ``dataset.npz`` beside the cases holds
them all in one file for fast loading.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from workbench.io_utils import InputError, atomic_path, atomic_write_text
from workbench.tasks.case_pool import run_cases
from workbench.tasks.dot.physics import Geometry, default_geometry

FORMAT = "workbench-dot/1"
PathLike = str | os.PathLike
POSITION_TOLERANCE_MM = 0.5


@dataclass
class Measurements:
    """Boundary data of one case: complex ``data`` (F, S, D) = amplitude * exp(i phase)."""

    data: np.ndarray
    frequencies_hz: np.ndarray
    sources_mm: np.ndarray
    detectors_mm: np.ndarray
    mask: Optional[np.ndarray] = None
    geometry: Optional[Geometry] = None


def save_measurements(path: PathLike, data: np.ndarray, geometry: Geometry, mask: Optional[np.ndarray] = None,
                      frequencies_hz=None) -> Path:
    """Write (F, S, D) complex ``data`` of ``geometry`` as a measurement file, atomically."""
    freqs = np.asarray((0.0, geometry.frequency_hz) if frequencies_hz is None else frequencies_hz, float)
    arrays = {"format": np.array(FORMAT), "frequencies_hz": freqs,
              "amplitude": np.abs(data).astype(np.float64), "phase_rad": np.angle(data).astype(np.float64),
              "sources_mm": geometry.sources_mm, "detectors_mm": geometry.detectors_mm,
              "geometry": np.array(json.dumps(geometry.to_dict()))}
    if mask is not None:
        arrays["mask"] = np.asarray(mask, bool)
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    return path


def load_measurements(path: PathLike) -> Measurements:
    """Read and validate a measurement file; bad input raises :class:`InputError` naming the fix."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"measurement file {path} not found: give the measurements.npz of a case "
                         "(`workbench dot simulate OUT_DIR` writes examples)")
    try:
        z = np.load(path, allow_pickle=False)
        keys = set(z.files)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same fix
        raise InputError(f"{path} is not a readable .npz measurement file ({type(exc).__name__}): "
                         f"write one with the keys documented in workbench.tasks.dot.data") from None
    need = ("frequencies_hz", "amplitude", "phase_rad", "sources_mm", "detectors_mm")
    missing = [k for k in need if k not in keys]
    if missing:
        raise InputError(f"{path.name} lacks {', '.join(missing)}: a measurement file needs {', '.join(need)} "
                         "(format in workbench.tasks.dot.data)")
    freqs = np.asarray(z["frequencies_hz"], float).ravel()
    amp, phase = np.asarray(z["amplitude"], float), np.asarray(z["phase_rad"], float)
    src, det = np.asarray(z["sources_mm"], float), np.asarray(z["detectors_mm"], float)
    shape = (len(freqs), len(src), len(det))
    if amp.shape != shape or phase.shape != shape or src.shape[1:] != (3,) or det.shape[1:] != (3,):
        raise InputError(f"{path.name}: amplitude {amp.shape} and phase {phase.shape} must be (frequencies, sources,"
                         f" detectors) = {shape}, positions (S, 3) and (D, 3): fix the arrays' shapes")
    mask = np.asarray(z["mask"], bool) if "mask" in keys else None
    if mask is not None and mask.shape != shape[1:]:
        raise InputError(f"{path.name}: mask has shape {mask.shape}, expected (sources, detectors) = {shape[1:]}")
    use = np.broadcast_to(mask if mask is not None else True, shape[1:])
    sel = amp[:, use]
    if not (np.all(np.isfinite(sel)) and np.all(np.isfinite(phase[:, use]))):
        raise InputError(f"{path.name} has NaN or infinite amplitude/phase values: set mask[s, d] = False for "
                         "pairs that were not measured")
    if np.any(sel <= 0):
        raise InputError(f"{path.name} has {int((sel <= 0).sum())} zero or negative amplitudes: amplitudes are "
                         "magnitudes (> 0); mask out pairs below the noise floor")
    geometry = None
    if "geometry" in keys:
        try:
            geometry = Geometry.from_dict(json.loads(str(z["geometry"])))
        except (ValueError, TypeError) as exc:
            raise InputError(f"{path.name}: its geometry entry is invalid ({exc}): remove it or fix it") from None
    data = np.where(np.broadcast_to(use, shape), amp, 1.0) * np.exp(1j * np.where(np.broadcast_to(use, shape),
                                                                                   phase, 0.0))
    return Measurements(data, freqs, src, det, mask, geometry)


def check_geometry(meas: Measurements, geometry: Geometry, what: str = "the checkpoint") -> np.ndarray:
    """(2, S, D) data at (CW, f_mod) if ``meas`` was taken with ``geometry``'s optodes and frequency, else an InputError."""
    fix = ("simulate and train for your geometry (`workbench dot simulate`, `workbench dot train`), "
           "or use data taken with the built-in one")
    if len(meas.sources_mm) != len(geometry.sources_mm) or len(meas.detectors_mm) != len(geometry.detectors_mm):
        raise InputError(f"measurements have {len(meas.sources_mm)} sources x {len(meas.detectors_mm)} detectors; "
                         f"{what} was trained for {len(geometry.sources_mm)} x {len(geometry.detectors_mm)}: {fix}")
    off = max(np.abs(meas.sources_mm - geometry.sources_mm).max(), np.abs(meas.detectors_mm - geometry.detectors_mm).max())
    if off > POSITION_TOLERANCE_MM:
        raise InputError(f"source/detector positions differ by up to {off:.1f} mm from the geometry {what} was "
                         f"trained for: {fix}")
    rows = []
    for f in (0.0, geometry.frequency_hz):
        hit = np.flatnonzero(np.isclose(meas.frequencies_hz, f, rtol=1e-6, atol=1e-3))
        if not len(hit):
            raise InputError(f"measurements lack the {'CW (0 Hz)' if f == 0 else f'{f / 1e6:g} MHz'} channel "
                             f"(they have {', '.join(f'{v / 1e6:g} MHz' for v in meas.frequencies_hz)}): "
                             "record CW and modulated data, or retrain for your frequencies")
        rows.append(meas.data[hit[0]])
    return np.stack(rows)


# ----------------------------------------------------------------------------- cases
def _case_files(case_dir: Path) -> list[Path]:
    return [case_dir / n for n in ("measurements.npz", "mu.nii.gz", "labels.nii.gz", "params.json")]


def case_complete(case_dir: Path) -> bool:
    return all(p.is_file() for p in _case_files(case_dir))


def simulate_case(case_dir: PathLike, seed: int, geometry: Geometry) -> Path:
    """Simulate one phantom and its noise-free data into ``case_dir`` (written to a temporary folder, then renamed)."""
    from workbench.data.nifti import save_volume
    from workbench.tasks.dot.phantoms import simulate_phantom
    from workbench.tasks.dot.physics import simulate_measurements

    case_dir = Path(case_dir)
    mu, labels, params = simulate_phantom(seed, geometry)
    data = simulate_measurements(geometry, mu)
    tmp = case_dir.with_name(f".{case_dir.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_measurements(tmp / "measurements.npz", data, geometry)
    save_volume(tmp / "mu.nii.gz", np.moveaxis(mu, 0, -1), geometry.affine())
    save_volume(tmp / "labels.nii.gz", labels, geometry.affine(), dtype=np.int16)
    atomic_write_text(tmp / "params.json", json.dumps({"seed": seed, "geometry": geometry.to_dict(), **params}))
    shutil.rmtree(case_dir, ignore_errors=True)
    os.replace(tmp, case_dir)
    return case_dir


def _worker(args):
    case_dir, seed, gdict = args   # the solves limit BLAS to one thread themselves (physics.serial_blas)
    simulate_case(case_dir, seed, Geometry.from_dict(gdict))
    return str(case_dir)


def case_seed(seed: int, i: int) -> int:
    """The phantom seed of case ``i`` of a dataset with seed ``seed`` (disjoint across seeds below 10^6 cases)."""
    return int(seed) * 1_000_003 + int(i)


def simulate_dataset(out_dir: PathLike, n: int, *, geometry: Optional[Geometry] = None, seed: int = 0,
                     workers: Optional[int] = None, progress: Optional[Callable[[int, int], None]] = None,
                     should_stop: Optional[Callable[[], bool]] = None, cache: bool = True) -> list[Path]:
    """Simulate ``n`` cases into ``out_dir`` in parallel processes; complete cases already there are kept (resumable).

    ``workers`` defaults to the CPU count (each solve is single-threaded SuperLU). With
    ``cache`` the cases are then gathered into ``dataset.npz``.
    """
    geometry = geometry or default_geometry()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = out / "dataset.json"
    if manifest.is_file():
        old = json.loads(manifest.read_text())
        if old.get("geometry") != geometry.to_dict() or old.get("seed") != seed:
            raise InputError(f"{out} holds a dataset of another geometry or seed ({manifest.name}): "
                             "use an empty folder, or the same --grid and --seed to resume")
    atomic_write_text(manifest, json.dumps({"format": FORMAT, "seed": seed, "n": max(n, int(
        json.loads(manifest.read_text()).get("n", 0)) if manifest.is_file() else n),
        "geometry": geometry.to_dict()}, indent=2))
    dirs = [out / f"case_{i:03d}" for i in range(n)]
    todo = [(str(d), case_seed(seed, i), geometry.to_dict()) for i, d in enumerate(dirs) if not case_complete(d)]
    run_cases(_worker, todo, total=n, workers=workers or os.cpu_count() or 1, progress=progress,
              should_stop=should_stop)
    if cache:
        build_cache(out, dirs)
    return dirs


# ----------------------------------------------------------------------------- the dataset
@dataclass
class DotDataset:
    """Cases of one geometry in memory: ``data`` (N, 2, S, D) complex, ``mu`` (N, 2, X, Y, Z), ``labels`` (N, X, Y, Z)."""

    geometry: Geometry
    data: np.ndarray
    mu: np.ndarray
    labels: np.ndarray
    names: list[str]

    def __len__(self) -> int:
        return len(self.names)


def _read_case(case_dir: Path) -> tuple[Geometry, np.ndarray, np.ndarray, np.ndarray]:
    from workbench.data.nifti import load_volume

    meas = load_measurements(case_dir / "measurements.npz")
    if meas.geometry is None:
        raise InputError(f"{case_dir}/measurements.npz has no geometry entry: training needs simulated cases")
    data = check_geometry(meas, meas.geometry, "its own geometry")
    mu, _, _ = load_volume(case_dir / "mu.nii.gz", "optical properties")
    labels, _, _ = load_volume(case_dir / "labels.nii.gz", "inclusion labels")
    if mu.ndim != 4 or mu.shape[-1] != 2:
        raise InputError(f"{case_dir}/mu.nii.gz has shape {mu.shape}; expected (X, Y, Z, 2): mu_a and mu_s'")
    return meas.geometry, data.astype(np.complex64), np.moveaxis(mu, -1, 0), labels.astype(np.int16)


def build_cache(out: Path, dirs: list[Path]) -> Path:
    """Gather complete cases into ``out/dataset.npz`` (one file, loaded in a second)."""
    geoms, data, mu, labels = [], [], [], []
    for d in dirs:
        g, dd, m, lab = _read_case(d)
        geoms.append(g), data.append(dd), mu.append(m.astype(np.float32)), labels.append(lab)
    if any(g != geoms[0] for g in geoms):
        raise InputError(f"cases in {out} were simulated with different geometries: keep one geometry per folder")
    path = out / "dataset.npz"
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, data=np.stack(data), mu=np.stack(mu), labels=np.stack(labels),
                     names=np.array([d.name for d in dirs]), geometry=np.array(json.dumps(geoms[0].to_dict())))
    return path


def load_dataset(data_dir: PathLike) -> DotDataset:
    """The cases of ``data_dir``: from ``dataset.npz`` when it lists exactly the complete case folders, else read them."""
    out = Path(data_dir)
    if not out.is_dir():
        raise InputError(f"{out} is not a folder: give a folder written by `workbench dot simulate`")
    dirs = sorted(d for d in out.glob("case_*") if d.is_dir() and case_complete(d))
    if not dirs:
        raise InputError(f"{out} holds no complete case_*/ folders: run `workbench dot simulate {out} --n 200` first")
    cache = out / "dataset.npz"
    names = [d.name for d in dirs]
    if not cache.is_file() or list(np.load(cache)["names"]) != names:
        build_cache(out, dirs)
    z = np.load(cache)
    return DotDataset(Geometry.from_dict(json.loads(str(z["geometry"]))), z["data"], z["mu"], z["labels"],
                      [str(n) for n in z["names"]])


def add_noise(data: np.ndarray, rng: np.random.Generator, sigma_amp: float, sigma_phase_deg: float) -> np.ndarray:
    """Measurement noise drawn at load time: amplitude x exp(sigma_amp n), phase + sigma_phase n (modulated rows).

    ``data`` (..., 2, S, D) complex (CW, modulated); returns a new array.
    """
    data = np.asarray(data, np.complex128)
    logamp = sigma_amp * rng.standard_normal(data.shape)
    phase = np.deg2rad(sigma_phase_deg) * rng.standard_normal(data.shape)
    phase[..., 0, :, :] = 0.0
    return data * np.exp(logamp + 1j * phase)
