"""Sample data: a small simulated DWI phantom with its clean reference and brain mask (no download)."""

from __future__ import annotations

import functools

import numpy as np

from napari_plugin._layers import dwi_metadata, spatial_kwargs, to_layer_order

SHAPE = (32, 32, 16)
SCHEME = "dti"
SNR = 15.0
SEED = 0

NOISY_NAME = "DWI phantom (noisy)"
CLEAN_NAME = "DWI phantom (clean reference)"
MASK_NAME = "brain mask"


@functools.lru_cache(maxsize=2)
def _phantom(shape=SHAPE, scheme=SCHEME, snr=SNR, seed=SEED):
    from workbench.data.phantoms import simulate_dwi

    return simulate_dwi(shape=shape, scheme=scheme, snr=snr, seed=seed)


def phantom_layers(shape=SHAPE, scheme=SCHEME, snr=SNR, seed=SEED) -> list[tuple]:
    """Noisy DWI (volumes first), clean reference and mask as napari layer data tuples."""
    p = _phantom(tuple(shape), scheme, float(snr), int(seed))
    where = f"simulated phantom {tuple(shape)}, {scheme} scheme, SNR {snr:g}, seed {seed}"
    common4 = {"axis_labels": ("volume", "x", "y", "z"), **spatial_kwargs(p.affine, 4)}
    noisy = (to_layer_order(p.noisy), {
        "name": NOISY_NAME, **common4,
        "metadata": {**dwi_metadata(p.affine, None, p.bvals, p.bvecs), "origin": where,
                     "role": "noisy input", "sigma": float(p.sigma)}}, "image")
    clean = (to_layer_order(p.clean), {
        "name": CLEAN_NAME, **common4, "visible": False,
        "metadata": {**dwi_metadata(p.affine, None, p.bvals, p.bvecs), "origin": where,
                     "role": "reference"}}, "image")
    mask = (np.asarray(p.mask, dtype=np.int32), {
        "name": MASK_NAME, "axis_labels": ("x", "y", "z"), **spatial_kwargs(p.affine, 3), "opacity": 0.3,
        "visible": False, "metadata": {**dwi_metadata(p.affine, is_4d=False), "origin": where}}, "labels")
    return [noisy, clean, mask]


def make_phantom_sample() -> list[tuple]:
    """npe2 sample-data hook."""
    return phantom_layers()


# --------------------------------------------------------------------------- task samples (generic)
def task_sample_layers(task_name: str, kind: str, **kw) -> list[tuple]:
    """A task's simulated case as layer tuples, one per role of its view, placed by their affines.

    Layers on different grids (an LR input and its HR reference) overlay in world
    coordinates: each gets the scale and translate of its own affine.
    """
    from workbench.tasks import get_task

    task = get_task(task_name)
    case = task.sample_case(kind, **kw)
    labels = {spec.role: spec for spec in task.view.layers}
    out = []
    for role, (array, affine) in case.items():
        spec = labels.get(role)
        name = f"{kind} {spec.label if spec else role}"
        meta = {**dwi_metadata(affine, is_4d=False), "role": role, "task": task.name,
                "origin": f"{task.label} sample '{kind}' (held out from training)"}
        out.append((np.asarray(array, np.float32), {
            "name": name, "axis_labels": ("x", "y", "z"), **spatial_kwargs(affine, 3), "metadata": meta,
            "colormap": spec.colormap if spec else "gray", "visible": role in (task.view.input_role,
                                                                              task.view.reference_role),
        }, "image"))
    return out


def make_soil_sr_sample() -> list[tuple]:
    """npe2 sample-data hook: soil micro-CT, LR x4 / tricubic / HR."""
    return task_sample_layers("sr", "soil", scale=4, size=64)


def make_chest_sr_sample() -> list[tuple]:
    """npe2 sample-data hook: a held-out slab of the real chest CT, LR x2 / tricubic / HR."""
    return task_sample_layers("sr", "chest", scale=2, size=96)


def make_soil_sr3_sample() -> list[tuple]:
    """npe2 sample-data hook: soil micro-CT degraded 8x in-plane (16 x 16 slices), bicubic / HR, for SR3."""
    return task_sample_layers("sr", "soil", scale=8, size=128, inplane=True, depth=8)
