"""Training checkpoints: atomic writing, safe loading, RNG capture and compatibility checks.

A checkpoint is a plain ``dict`` of tensors, numbers, strings, lists and dicts, so it
loads with ``torch.load(..., weights_only=True)`` (no arbitrary code runs when a
checkpoint from elsewhere is opened). Keys written by the trainer:

``kind`` ('workbench-checkpoint'), ``format_version`` (1), ``step``, ``config``
(``Config.model_dump(mode='json')``), ``model_state``, ``optimizer_state``,
``scheduler_state``, ``scaler_state``, ``rng`` (see :func:`capture_rng_state`),
``sampler_generator_state``, ``best_loss``, ``bad_validations`` (early-stopping
counter), ``loss_weights``, ``loss_weights_history``, ``val_history``,
``model_meta`` and ``task_meta``.
"""

from __future__ import annotations

import os
import pickle
import random
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from workbench.io_utils import InputError, atomic_path

KIND = "workbench-checkpoint"
FORMAT_VERSION = 1
REQUIRED_KEYS = ("kind", "format_version", "step", "config", "model_state", "model_meta")
"""Keys every workbench checkpoint holds (resuming needs more; see the trainer)."""

MODEL_META_KEYS = ("name", "in_channels", "out_channels", "num_conditions", "residual_channel")


def save_checkpoint(path: str | os.PathLike, state: dict) -> Path:
    """Write ``state`` to ``path`` atomically.

    The data go to a temporary file in the same folder, which then replaces
    ``path`` with ``os.replace``, so a crash never leaves a half-written
    checkpoint under the final name.

    Parameters
    ----------
    path : str or os.PathLike
        Destination, e.g. ``run/last.pt``. Parent folders are created.
    state : dict
        Plain data (tensors, numbers, strings, lists, dicts). ``kind`` and
        ``format_version`` are filled in when missing.

    Returns
    -------
    pathlib.Path
        The path written.
    """
    path = Path(path)
    state = dict(state)
    state.setdefault("kind", KIND)
    state.setdefault("format_version", FORMAT_VERSION)
    with atomic_path(path, suffix=".tmp") as tmp:
        torch.save(state, tmp)
    return path


def load_checkpoint(path: str | os.PathLike, expected_kind: Optional[str] = None) -> dict:
    """Load and validate a checkpoint on the CPU, with ``weights_only=True``.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.pt`` file.
    expected_kind : str, optional
        Required value of the ``kind`` entry; defaults to ``'workbench-checkpoint'``.

    Returns
    -------
    dict
        The checkpoint contents (tensors on the CPU).

    Raises
    ------
    workbench.io_utils.InputError
        The file is missing, truncated or corrupt, holds objects that are not
        plain data, is not a workbench checkpoint, or has another format version.
    """
    path = Path(path)
    kind = expected_kind or KIND
    if not path.is_file():
        raise InputError(f"checkpoint {path} does not exist: check the path or train a model first")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(
            f"checkpoint {path} holds objects that cannot be loaded safely ({first}): "
            "it was not written by the workbench; re-save it or use last.pt/best.pt"
        ) from e
    except Exception as e:  # zip reader errors, EOFError, ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(
            f"checkpoint {path} is truncated or not a workbench checkpoint ({first}): "
            "re-save it or use last.pt/best.pt"
        ) from e
    if not isinstance(ckpt, dict) or ckpt.get("kind") != kind:
        found = ckpt.get("kind") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise InputError(
            f"checkpoint {path} is not a {kind} (found kind {found!r}): "
            "pick a file written by the workbench, e.g. RUN_DIR/last.pt or RUN_DIR/best.pt"
        )
    version = ckpt.get("format_version")
    if version != FORMAT_VERSION:
        hint = "upgrade the workbench" if isinstance(version, int) and version > FORMAT_VERSION else "re-train"
        raise InputError(
            f"checkpoint {path} has format version {version!r}, this workbench reads version "
            f"{FORMAT_VERSION}: {hint} or pick a matching checkpoint"
        )
    if kind == KIND:
        missing = [k for k in REQUIRED_KEYS if k not in ckpt]
        if missing:
            raise InputError(
                f"checkpoint {path} is not a complete workbench checkpoint (missing {', '.join(missing)}): "
                "re-save it or use last.pt/best.pt"
            )
        migrate_config(ckpt["config"])
    return ckpt


def migrate_config(config: dict) -> dict:
    """Fill in, in place, what a checkpoint's config (a full dump) lacks because it was saved before the
    option existed, with the value that reproduces how it was trained: ``data.volume_input`` 'noisy',
    ``data.prior_ridge`` 1e-3."""
    data = config.get("data") if isinstance(config, dict) else None
    if isinstance(data, dict):
        data.setdefault("volume_input", "noisy")
        data.setdefault("prior_ridge", 1e-3)
    return config


_META_WORDS = {
    "num_conditions": "{} volumes",
    "in_channels": "{} input channels",
    "out_channels": "{} output channels",
    "residual_channel": "residual channel {}",
}


def check_compatible(ckpt: dict, model_meta: dict) -> None:
    """Check that a checkpoint's model fits the model this data needs.

    Parameters
    ----------
    ckpt : dict
        A loaded checkpoint (or directly its ``model_meta`` dict).
    model_meta : dict
        What the current data/task needs: any of ``name``, ``in_channels``,
        ``out_channels``, ``num_conditions``, ``residual_channel``. Keys absent
        from either side are not compared.

    Raises
    ------
    workbench.io_utils.InputError
        Naming every mismatch, e.g. "checkpoint was trained for model 'denoiser'
        with 22 volumes; this data has 65 volumes: train a new model or pick the
        matching checkpoint".
    """
    saved = ckpt.get("model_meta", ckpt) if isinstance(ckpt, dict) else None
    saved = saved or {}
    was, now = [], []
    for key, fmt in _META_WORDS.items():
        if key in saved and key in model_meta and saved[key] != model_meta[key]:
            was.append(fmt.format(saved[key]))
            now.append(fmt.format(model_meta[key]))
    name_differs = "name" in saved and "name" in model_meta and saved["name"] != model_meta["name"]
    if not was and not name_differs:
        return
    msg = f"checkpoint was trained for model '{saved.get('name', '?')}'"
    if was:
        msg += " with " + ", ".join(was) + "; this data has " + ", ".join(now)
    if name_differs:
        msg += f"; this run asks for model '{model_meta['name']}'"
    raise InputError(msg + ": train a new model or pick the matching checkpoint")


# --------------------------------------------------------------------------- RNG state


def capture_rng_state() -> dict:
    """Every global RNG state, as plain data loadable with ``weights_only=True``.

    Returns
    -------
    dict
        ``torch`` (uint8 tensor), ``cuda`` (list of tensors, one per device;
        empty without CUDA), ``numpy`` (list: name, key as list of ints, pos,
        has_gauss, cached_gaussian), ``python`` (list: version, state as list of
        ints, gauss_next).
    """
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": [s.cpu() for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
        "numpy": [str(np_state[0]), np.asarray(np_state[1]).tolist(), int(np_state[2]), int(np_state[3]),
                  float(np_state[4])],
        "python": [int(py_state[0]), list(py_state[1]), py_state[2]],
    }


def restore_rng_state(state: dict) -> None:
    """Restore the global RNGs from :func:`capture_rng_state` output."""
    torch.set_rng_state(state["torch"].cpu().to(torch.uint8))
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available():
        n = min(len(cuda), torch.cuda.device_count())
        torch.cuda.set_rng_state_all([s.cpu().to(torch.uint8) for s in cuda[:n]])
    if state.get("numpy") is not None:
        name, key, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((name, np.asarray(key, dtype=np.uint32), int(pos), int(has_gauss), float(cached)))
    if state.get("python") is not None:
        version, internal, gauss_next = state["python"]
        random.setstate((int(version), tuple(int(v) for v in internal), gauss_next))


def config_differences(saved: Any, current: Any, prefix: str = "", ignore: tuple[str, ...] = ()) -> list[str]:
    """Dotted keys where two nested config dicts differ (``ignore`` lists dotted keys to skip)."""
    if isinstance(saved, dict) and isinstance(current, dict):
        out: list[str] = []
        for key in sorted(set(saved) | set(current), key=str):
            dotted = f"{prefix}{key}"
            if dotted in ignore:
                continue
            if key not in saved or key not in current:
                out.append(dotted)
            else:
                out.extend(config_differences(saved[key], current[key], dotted + ".", ignore))
        return out
    return [] if saved == current else [prefix.rstrip(".")]
