"""Cases on disk, X-ray files, the simulated dataset and the real chest CT for the ``xray2ct`` task.

A case folder (``workbench xray2ct simulate`` / ``project``)::

    case_000/ct.nii.gz        the CT (X, Y, Z) in HU on the stage-1 grid (64^3), LAS mm affine
              ct_hr.nii.gz    the same anatomy on the fine grid (128^3; simulated cases)
              labels.nii.gz   tissue classes (simulated cases; see phantoms.LABELS)
              xray_ap.nii.gz  AP line integrals (u, v) = (X, Z), float32, with Poisson noise
              xray_lat.nii.gz lateral line integrals (u, v) = (Y, Z)
              geometry.json   the beam geometry (XrayGeometry.to_dict) and the case's seed

X-rays are line integrals of attenuation (``-log(I / I0)``, dimensionless). PNG and
TIFF files are read too: a float TIFF holds line integrals; an integer image (16-bit
kept) is a radiograph as displayed - row 0 at the top (head), column 0 at the start of
the u axis, brighter = more attenuation - and maps to ``value / max_of_dtype *``
:data:`IMAGE_FULL_SCALE`.
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
from workbench.tasks.xray2ct.geometry import XrayGeometry, add_photon_noise, default_geometry, project_hu

PathLike = str | os.PathLike
#: line integral of a full-scale pixel in an integer (PNG, 16-bit TIFF) radiograph
IMAGE_FULL_SCALE = 10.0
HU_WINDOW = (-1000.0, 1000.0)
VIEW_FILES = {"ap": "xray_ap.nii.gz", "lateral": "xray_lat.nii.gz"}


def hu_to_unit(hu):
    """HU -> the networks' units: the window [-1000, 1000] HU onto [0, 1] (not clipped)."""
    return (hu - HU_WINDOW[0]) / (HU_WINDOW[1] - HU_WINDOW[0])


def unit_to_hu(t):
    return t * (HU_WINDOW[1] - HU_WINDOW[0]) + HU_WINDOW[0]


# ------------------------------------------------------------------------------- X-ray files
def save_xray(path: PathLike, image: np.ndarray, g: XrayGeometry, view: str) -> Path:
    from workbench.data.nifti import save_volume

    return save_volume(path, np.asarray(image, np.float32), g.image_affine(view))


def load_xray(path: PathLike, what: str = "X-ray") -> np.ndarray:
    """A 2D X-ray as line integrals (u, v), float32, from NIfTI, PNG or TIFF."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} {path} does not exist: give the file of that view")
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        from workbench.data.nifti import load_volume

        img, _, _ = load_volume(path, what)
        img = np.asarray(img, np.float32)
        while img.ndim > 2 and img.shape[-1] == 1:
            img = img[..., 0]
    elif name.endswith((".png", ".tif", ".tiff")):
        img = _load_picture(path, what)
    else:
        raise InputError(f"{what} {path}: unknown format; give a .nii.gz, .png or .tif X-ray")
    if img.ndim != 2:
        raise InputError(f"{what} {path} has shape {img.shape}: an X-ray is one 2D image (is this a CT volume?)")
    if not np.isfinite(img).all():
        raise InputError(f"{what} {path} contains NaN or infinite values: give line integrals (-log(I/I0))")
    return img


def _load_picture(path: Path, what: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            frames = getattr(im, "n_frames", 1)
            if frames > 1:
                raise InputError(f"{what} {path} has {frames} frames: an X-ray is one 2D image")
            arr = np.array(im)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"cannot read {what} {path} ({type(exc).__name__}: {exc})") from exc
    if arr.ndim == 3:
        raise InputError(f"{what} {path} is a colour image: give a greyscale radiograph")
    if np.issubdtype(arr.dtype, np.integer):
        arr = arr.astype(np.float64) / np.iinfo(arr.dtype).max * IMAGE_FULL_SCALE
    return np.ascontiguousarray(arr[::-1].T, dtype=np.float32)    # displayed rows (top = head) -> (u, v)


def save_picture(path: PathLike, image: np.ndarray) -> Path:
    """An X-ray as a 16-bit PNG in the display convention of :func:`load_xray` (clipped to the full scale)."""
    from PIL import Image

    v = np.clip(np.asarray(image, np.float64) / IMAGE_FULL_SCALE, 0, 1) * 65535
    arr = np.ascontiguousarray(np.round(v).astype(np.uint16).T[::-1])
    with atomic_path(Path(path)) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")
    return Path(path)


def load_views(ap: Optional[PathLike], lateral: Optional[PathLike], g: Optional[XrayGeometry] = None) -> np.ndarray:
    """The two views (2, nu, nv) float32, checked against each other and against ``g``."""
    if ap is None or lateral is None:
        missing = "--ap" if ap is None else "--lateral"
        raise InputError(f"{missing} is missing: the reconstruction needs both views (AP and lateral)")
    a, b = load_xray(ap, "AP X-ray"), load_xray(lateral, "lateral X-ray")
    if a.shape != b.shape:
        raise InputError(f"the AP ({a.shape[0]}x{a.shape[1]}) and lateral ({b.shape[0]}x{b.shape[1]}) X-rays differ "
                         "in size: give two views from the same detector")
    if g is not None and a.shape != tuple(g.detector_px):
        raise InputError(f"the X-rays are {a.shape[0]}x{a.shape[1]} pixels but the checkpoint was trained for "
                         f"{g.detector_px[0]}x{g.detector_px[1]} ({g.kind} beam): project the CT with that geometry "
                         "or train a checkpoint for yours")
    return np.stack([a, b])


def read_geometry(path: PathLike) -> XrayGeometry:
    try:
        return XrayGeometry.from_dict(json.loads(Path(path).read_text()))
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise InputError(f"cannot read the geometry {path} ({exc}): it is written by `workbench xray2ct simulate`")


def geometry_beside(xray: PathLike) -> Optional[XrayGeometry]:
    """The geometry.json in an X-ray's folder, if there is one."""
    p = Path(xray).with_name("geometry.json")
    return read_geometry(p) if p.is_file() else None


# ------------------------------------------------------------------------------- cases
def write_case(case_dir: PathLike, hu: np.ndarray, g: XrayGeometry, *, seed: int, hu_hr: Optional[np.ndarray] = None,
               labels: Optional[np.ndarray] = None, extra: Optional[dict] = None) -> Path:
    """Project ``hu`` (on ``g``'s grid), add photon noise (seeded) and write a case folder atomically (tmp + rename)."""
    import torch

    from workbench.data.nifti import save_volume

    case_dir = Path(case_dir)
    p = torch.from_numpy(project_hu(hu, g))
    noisy = add_photon_noise(p, g.photons, torch.Generator().manual_seed(int(seed) % 2 ** 63)).numpy()
    tmp = case_dir.with_name(f".{case_dir.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_volume(tmp / "ct.nii.gz", hu.astype(np.float32), g.affine())
    if hu_hr is not None:
        save_volume(tmp / "ct_hr.nii.gz", hu_hr.astype(np.float32), g.with_size(hu_hr.shape[0]).affine())
    if labels is not None:
        save_volume(tmp / "labels.nii.gz", labels, g.affine(), dtype=np.int16)
    for k, view in enumerate(g.views):
        save_xray(tmp / VIEW_FILES[view], noisy[k], g, view)
    atomic_write_text(tmp / "geometry.json", json.dumps({**g.to_dict(), "seed": int(seed), **(extra or {})},
                                                         indent=2))
    shutil.rmtree(case_dir, ignore_errors=True)
    os.replace(tmp, case_dir)
    return case_dir


def case_complete(case_dir: Path) -> bool:
    return all((case_dir / f).is_file() for f in ("ct.nii.gz", "geometry.json", *VIEW_FILES.values()))


def case_seed(seed: int, i: int) -> int:
    """The phantom seed of case ``i`` of a dataset with seed ``seed`` (disjoint across seeds below 10^6 cases)."""
    return int(seed) * 1_000_003 + int(i)


def simulate_case(case_dir: PathLike, seed: int, g: XrayGeometry, hr_size: int = 0) -> Path:
    """One phantom: rendered on the fine grid and average-pooled to ``g``'s (so stage 2 inverts a known
    downsampling), projected, written."""
    from workbench.tasks.xray2ct.phantoms import render, sample_params

    params = sample_params(np.random.default_rng(seed))
    hu_hr = None
    if hr_size:
        f = hr_size // g.size
        hu_hr, _ = render(params, hr_size, g.fov_mm)
        hu = hu_hr.reshape(g.size, f, g.size, f, g.size, f).mean((1, 3, 5))
    else:
        hu = render(params, g.size, g.fov_mm)[0]
    labels = render(params, g.size, g.fov_mm)[1]
    return write_case(case_dir, hu, g, seed=seed, hu_hr=hu_hr, labels=labels, extra={"phantom": params})


def _worker(args):
    case_dir, seed, gdict, hr_size = args
    import torch

    torch.set_num_threads(1)
    simulate_case(case_dir, seed, XrayGeometry.from_dict(gdict), hr_size)
    return case_dir


def simulate_dataset(out_dir: PathLike, n: int, *, geometry: Optional[XrayGeometry] = None, seed: int = 0,
                     hr_size: int = 0, workers: Optional[int] = None, progress: Optional[Callable] = None,
                     should_stop: Optional[Callable[[], bool]] = None) -> list[Path]:
    """``n`` phantom cases in ``out_dir``, one process per core; complete cases already there are kept (resumable)."""
    g = geometry or default_geometry()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = out / "dataset.json"
    record = {"format": "workbench-xray2ct/1", "seed": int(seed), "hr_size": int(hr_size), "geometry": g.to_dict()}
    if manifest.is_file():
        old = json.loads(manifest.read_text())
        if {k: old.get(k) for k in ("seed", "hr_size", "geometry")} != {k: record[k] for k in ("seed", "hr_size",
                                                                                                "geometry")}:
            raise InputError(f"{out} holds cases of another geometry, size or seed ({manifest.name}): use an empty "
                             "folder, or the same --size, --geometry and --seed to resume")
    atomic_write_text(manifest, json.dumps(record, indent=2))
    dirs = [out / f"case_{i:03d}" for i in range(n)]
    todo = [(str(d), case_seed(seed, i), g.to_dict(), hr_size) for i, d in enumerate(dirs) if not case_complete(d)]
    run_cases(_worker, todo, total=n, workers=workers or os.cpu_count() or 1, progress=progress,
              should_stop=should_stop)
    return dirs


# ------------------------------------------------------------------------------- the dataset
@dataclass
class XrayDataset:
    """Training volumes of one geometry: ``hu`` (N, G, G, G) int16 HU (the X-rays are re-projected with fresh noise)."""

    geometry: XrayGeometry
    hu: np.ndarray
    names: list[str]
    folder: Optional[Path] = None

    def __len__(self) -> int:
        return len(self.names)

    @property
    def seed(self) -> Optional[int]:
        """The simulation seed of ``dataset.json`` (None for folders not written by ``simulate``)."""
        info = Path(self.folder or "") / "dataset.json"
        if not self.folder or not info.is_file():
            return None
        seed = json.loads(info.read_text()).get("seed")
        return None if seed is None else int(seed)


def _case_geometry(d: Path) -> XrayGeometry:
    return read_geometry(d / "geometry.json")


def load_dataset(data_dir: PathLike) -> XrayDataset:
    """The cases of ``data_dir`` (cached in ``dataset.npz``, rebuilt when the case folders change)."""
    from workbench.data.nifti import load_volume

    out = Path(data_dir)
    if not out.is_dir():
        raise InputError(f"{out} is not a folder: give a folder written by `workbench xray2ct simulate`")
    dirs = sorted(d for d in out.glob("case_*") if d.is_dir() and case_complete(d))
    if not dirs:
        raise InputError(f"{out} holds no complete case_*/ folders: run `workbench xray2ct simulate {out} --n 200`")
    names = [d.name for d in dirs]
    cache = out / "dataset.npz"
    if cache.is_file():
        z = np.load(cache)
        if [str(s) for s in z["names"]] == names:
            return XrayDataset(XrayGeometry.from_dict(json.loads(str(z["geometry"]))), z["hu"], names, out)
    g = _case_geometry(dirs[0])
    vols = []
    for d in dirs:
        if not _case_geometry(d).same_beams(g) or _case_geometry(d).size != g.size:
            raise InputError(f"{d} was simulated with another geometry than {dirs[0].name}: keep one per folder")
        hu, _, _ = load_volume(d / "ct.nii.gz", "CT")
        if hu.shape != (g.size,) * 3:
            raise InputError(f"{d}/ct.nii.gz has shape {hu.shape}, not the geometry's {g.size}^3 grid")
        vols.append(np.clip(np.round(hu), -1024, 3071).astype(np.int16))
    with atomic_path(cache) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, hu=np.stack(vols), names=np.array(names), geometry=np.array(json.dumps(g.to_dict())))
    return XrayDataset(g, np.stack(vols), names, out)
