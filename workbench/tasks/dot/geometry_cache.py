"""On-disk cache of what a trained DOT network derives from its geometry.

A checkpoint stores the geometry, not the network's geometry buffers: the lifting weights (the pairs' sensitivity,
pooled to the lift grid) and the Tikhonov map (one regularised Rytov inversion per weight). Both come from the
background Jacobian (two sparse LU factorisations and adjoint solves per frequency) and an eigendecomposition of
its 3P x 3P Gram matrix: ~15 s on 2 cores at grid 32, paid by every process that loads the network (each
``workbench dot predict``, the napari panel's first reconstruction). They are a pure function of the geometry, the
lift grid, the feature scales, the Tikhonov settings and the code that computes them, so they are kept in a cache
folder under a key made of all of these (as is the homogeneous reference data, one forward solve per frequency:
:func:`~workbench.tasks.dot.training.reference_data`), the source of the modules that compute them included (a changed solver
never reads an old entry). Entries are written atomically; a missing, damaged or unwritable entry means computing
again, never an error.

The folder: ``$WORKBENCH_CACHE_DIR``, else ``$XDG_CACHE_HOME/recon-workbench``, else ``~/.cache/recon-workbench``;
``WORKBENCH_CACHE_DIR=off`` turns the cache off.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from functools import lru_cache
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from workbench.io_utils import atomic_path
from workbench.tasks.dot.physics import Geometry

CACHE_ENV = "WORKBENCH_CACHE_DIR"
FORMAT = 1
#: the folder's DOT entries are kept within this many bytes, the least recently used removed first (an entry of the
#: built-in geometry at grid 32 is 80 MB; every trained network has its own feature scales, so its own entry)
LIMIT_BYTES = 1 << 30


def cache_dir() -> Optional[Path]:
    """The cache folder, or None when ``$WORKBENCH_CACHE_DIR`` is ``off``."""
    chosen = os.environ.get(CACHE_ENV)
    if chosen:
        return None if chosen.lower() == "off" else Path(chosen).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "recon-workbench"


@lru_cache(maxsize=1)
def _code_digest() -> str:
    from workbench.tasks.dot import baselines, physics, training

    h = hashlib.sha256()
    for module in (physics, baselines, training):
        h.update(Path(module.__file__).read_bytes())
    return h.hexdigest()


def entry_key(kind: str, what: dict) -> str:
    """The name of an entry: ``kind`` and a hash of everything its arrays depend on (``what``, the code)."""
    record = {"format": FORMAT, "kind": kind, **what, "code": _code_digest()}
    return f"dot_{kind}_{hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:24]}"


def cached_arrays(kind: str, what: dict, compute: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The arrays of the entry (``kind``, ``what``) from the cache folder, else ``compute()``'s, then stored."""
    folder = cache_dir()
    path = None if folder is None else folder / f"{entry_key(kind, what)}.npz"
    if path is not None and path.is_file():
        try:
            with np.load(path) as entry:
                arrays = {k: entry[k] for k in entry.files}
            os.utime(path)  # used now: the last to be removed
            return arrays
        except (OSError, ValueError, EOFError, zipfile.BadZipFile):
            pass  # damaged (an interrupted copy, a full disk): compute again and replace it
    arrays = compute()
    if path is not None:
        try:
            with atomic_path(path) as tmp:
                with open(tmp, "wb") as f:
                    np.savez(f, **arrays)
            evict(path.parent, LIMIT_BYTES, keep=path)
        except OSError:
            pass  # a read-only or full cache folder: computed each time, as without a cache
    return arrays


def evict(folder: Path, limit_bytes: int, keep: Optional[Path] = None) -> list[Path]:
    """Remove the least recently used DOT entries of ``folder`` until they fit in ``limit_bytes`` (never ``keep``);
    returns what was removed."""
    entries = []
    for path in folder.glob("dot_*.npz"):
        try:
            st = path.stat()
        except OSError:
            continue  # removed meanwhile by another process
        entries.append((st.st_mtime, st.st_size, path))
    total = sum(size for _, size, _ in entries)
    removed = []
    for _, size, path in sorted(entries, key=lambda e: e[0]):
        if total <= limit_bytes:
            break
        if keep is not None and path == keep:
            continue
        try:
            path.unlink()
        except OSError:
            continue
        total -= size
        removed.append(path)
    return removed


def buffers_key(geometry: Geometry, lift_grid: int, scales: Sequence[float], inverse: Optional[dict]) -> str:
    """The entry of :func:`geometry_buffers`."""
    return entry_key("buffers", _buffers_what(geometry, lift_grid, scales, inverse))


def _buffers_what(geometry, lift_grid, scales, inverse) -> dict:
    return {"geometry": geometry.to_dict(), "lift_grid": int(lift_grid), "scales": [float(s) for s in scales],
            "inverse": inverse or None}


def geometry_buffers(geometry: Geometry, lift_grid: int, scales: Sequence[float],
                     inverse: Optional[dict]) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """``(lifting weights (P, g, g, g), Tikhonov map (3, P, 2 L, g, g, g) or None)`` as float32, from the cache
    when an entry is there, else computed (:func:`~workbench.tasks.dot.training.lifting_weights`,
    :func:`~workbench.tasks.dot.training.tikhonov_operator`) and stored."""
    def compute() -> dict[str, np.ndarray]:
        from workbench.tasks.dot.training import lifting_weights, tikhonov_operator

        out = {"lift": lifting_weights(geometry, lift_grid).numpy()}
        if inverse and inverse.get("lambdas"):
            out["op"] = tikhonov_operator(geometry, lift_grid, scales, inverse["lambdas"],
                                          sigma_amp=inverse["sigma_amp"],
                                          sigma_phase_deg=inverse["sigma_phase_deg"]).numpy()
        return out

    arrays = cached_arrays("buffers", _buffers_what(geometry, lift_grid, scales, inverse), compute)
    if "lift" not in arrays:
        arrays = compute()  # an entry without its arrays: not ours to trust
    return arrays["lift"], arrays.get("op")
