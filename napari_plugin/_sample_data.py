"""Sample data: a small simulated DWI phantom with its clean reference and brain mask (no download)."""

from __future__ import annotations

import functools

import numpy as np

from napari_plugin._layers import axial_view, dwi_metadata, spatial_kwargs, to_layer_order

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


def shown_axially(layers: list[tuple]) -> list[tuple]:
    """``layers``, and the viewer they are opened in turned to the axial view once it holds them all.

    A sample hook only returns layer data; napari adds the layers afterwards, one insertion
    each, and would show them sliced along x (its default: the first axis), which for a
    volume degraded 8x in-plane is a 16 x 128 strip. So the hook asks the current viewer to
    call :func:`napari_plugin._layers.axial_view` after the last of its layers is inserted.
    Outside a viewer (a hook called from a script) nothing happens.
    """
    try:
        import napari

        viewer = napari.current_viewer()
    except ImportError:
        return layers
    if viewer is None or not layers:
        return layers
    remaining = [len(layers)]

    def on_inserted(event=None) -> None:
        remaining[0] -= 1
        if remaining[0] <= 0:
            viewer.layers.events.inserted.disconnect(on_inserted)
            axial_view(viewer)

    viewer.layers.events.inserted.connect(on_inserted)
    return layers


def make_phantom_sample() -> list[tuple]:
    """npe2 sample-data hook."""
    return shown_axially(phantom_layers())


# --------------------------------------------------------------------------- task samples (generic)
def task_sample_layers(task_name: str, kind: str, *, prefix: str | None = None, **kw) -> list[tuple]:
    """A task's simulated case as layer tuples, one per role of its view, placed by their affines.

    Layers on different grids (an LR input and its HR reference) overlay in world
    coordinates: each gets the scale and translate of its own affine. Layer names start
    with ``prefix`` (default: ``kind``).
    """
    from workbench.tasks import get_task

    task = get_task(task_name)
    case = task.sample_case(kind, **kw)
    labels = {spec.role: spec for spec in task.view.layers}
    out = []
    for role, (array, affine) in case.items():
        spec = labels.get(role)
        name = f"{prefix or kind} {spec.label if spec else role}"
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
    return shown_axially(task_sample_layers("sr", "soil", scale=4, size=64))


def make_chest_sr_sample() -> list[tuple]:
    """npe2 sample-data hook: a held-out slab of the real chest CT, LR x2 / tricubic / HR."""
    return shown_axially(task_sample_layers("sr", "chest", scale=2, size=96))


def make_soil_sr3_sample() -> list[tuple]:
    """npe2 sample-data hook: soil micro-CT degraded 8x in-plane (16 x 16 slices), bicubic / HR, for SR3."""
    return shown_axially(task_sample_layers("sr", "soil", scale=8, size=128, inplane=True, depth=8))


def make_coarse_soil_sr3_sample() -> list[tuple]:
    """npe2 sample-data hook: as :func:`make_soil_sr3_sample` with grains of radius 10 voxels (medium sand),
    where the LR pixel is about a grain and SR3 gains most (the README's SR3 table)."""
    return shown_axially(task_sample_layers("sr", "soil", prefix="coarse soil", scale=8, size=128, inplane=True,
                                            depth=8, grain_radius=10.0))


# --------------------------------------------------------------------------- NIR diffuse optical tomography
DOT_SEED = 900_000_001
DOT_GRID = 32
DOT_CHANNELS = (("mu_a", "mu_a", "magma"), ("mu_s", "mu_s'", "viridis"))  # (channel key, shown name, colormap)
SOURCE_COLOR, DETECTOR_COLOR = "red", "cyan"


@functools.lru_cache(maxsize=2)
def _dot_case(grid: int, seed: int) -> dict:
    from workbench.tasks import get_task
    from workbench.tasks.dot.physics import serial_blas

    with serial_blas():  # sparse LU: a multi-threaded BLAS only slows it down (ten-fold on a busy machine)
        return get_task("dot").sample_case("phantom", seed=seed, grid=grid)


def dot_case_id(grid: int, seed: int) -> str:
    return f"dot phantom {seed} grid {grid}"


def optode_points(positions_mm, affine, name: str, color, symbol: str, size_mm: float, metadata: dict):
    """``(data, kwargs)`` of a Points layer at mm positions, on the image layers' grid.

    The data are in voxel units with the images' scale and translate (world coordinates stay mm),
    so napari slices the points like the images: a point shows on the slices within half a voxel
    of it, and within the viewer's slab where thick slicing is on (shrinking with the distance).
    """
    where = spatial_kwargs(affine, 3)
    data = (np.asarray(positions_mm, float) - where["translate"]) / where["scale"]
    kwargs = {"name": name, "face_color": color, "border_color": "white", "border_width": 0.1, "symbol": symbol,
              "size": size_mm / float(np.mean(where["scale"])), "projection_mode": "all",
              "axis_labels": ("x", "y", "z"), **where, "metadata": metadata}
    return data, kwargs


def dot_sample_layers(grid: int = DOT_GRID, seed: int = DOT_SEED) -> list[tuple]:
    """A held-out DOT phantom: mu_a and mu_s' (ground truth, one layer each), its body and inclusion masks,
    the sources and detectors as Points on the body surface, and the noisy boundary data on the sources layer.

    Every layer sits on the geometry's mm grid (napari world coordinates = mm); the measurements
    (``dot_data``, complex (2, S, D): CW and the modulation frequency) travel in the metadata of
    the ``sources`` layer (``role`` ``"measurements"``), with the geometry they were taken with.
    """
    case = _dot_case(int(grid), int(seed))
    g = case["geometry"]
    aff = g.affine()
    case_id = dot_case_id(grid, seed)
    where = f"NIR-DOT phantom (seed {seed}, {grid}^3 grid of {g.voxel_mm:g} mm; held out from training)"

    def meta(**kw) -> dict:
        return {**dwi_metadata(aff, is_4d=False), "task": "dot", "case": case_id, "origin": where, **kw}

    common = {"axis_labels": ("x", "y", "z"), **spatial_kwargs(aff, 3)}
    out = []
    for c, (key, shown, cmap) in enumerate(DOT_CHANNELS):
        vol = np.asarray(case["mu"][c], np.float32)
        inside = vol[g.body_mask]
        out.append((vol, {"name": f"phantom {shown}", **common, "colormap": cmap, "visible": c == 0,
                          "contrast_limits": (float(inside.min()), float(inside.max())),
                          "metadata": meta(role="reference", channel=key, units="1/mm")}, "image"))
    out.append((g.body_mask.astype(np.int32), {"name": "body", **common, "opacity": 0.3, "visible": False,
                                                "metadata": meta(role="body")}, "labels"))
    out.append((np.asarray(case["labels"], np.int32), {"name": "inclusions", **common, "opacity": 0.5,
                                                       "visible": False, "metadata": meta(role="inclusions")},
                "labels"))
    size = 2.0 * g.voxel_mm
    measurements = meta(role="measurements", dot_data=np.asarray(case["data"]), dot_mask=None,
                        geometry=g.to_dict(), frequencies_hz=(0.0, float(g.frequency_hz)))
    out.append((*optode_points(g.sources_mm, aff, "sources", SOURCE_COLOR, "disc", size, measurements), "points"))
    out.append((*optode_points(g.detectors_mm, aff, "detectors", DETECTOR_COLOR, "square", size,
                               meta(role="detectors")), "points"))
    return out


def make_dot_sample() -> list[tuple]:
    """npe2 sample-data hook: a held-out NIR-DOT phantom with its optodes and noisy boundary data."""
    return shown_axially(dot_sample_layers())


# --------------------------------------------------------------------------- CT from biplanar X-rays
XRAY_SEED = 900_000_001
XRAY_SIZE = 64
XRAY_ROLES = {"ap": "xray_ap", "lateral": "xray_lat"}  # view -> layer role (the task's view)
XRAY_NAMES = {"ap": "AP X-ray", "lateral": "lateral X-ray"}
XRAY_GAP = 0.1  # gap between the pictures beside the volume, as a fraction of the field's depth


@functools.lru_cache(maxsize=2)
def _xray_case(size: int, seed: int) -> dict:
    from workbench.tasks import get_task

    return get_task("xray2ct").sample_case("phantom", seed=seed, size=size)


def xray_case_id(size: int, seed: int) -> str:
    return f"xray2ct phantom {seed} size {size}"


def xray_placement(g, view: str, shape=None) -> dict:
    """``scale`` and ``translate`` of a 2D X-ray layer: beside the volume, on the volume's scale.

    napari puts a 2D layer on the last two world axes, (Y, Z) of the (X, Y, Z) volume, so in a
    sagittal view (Z up, Y across) the lateral X-ray's axes (Y, Z) and the AP's (X, Z) run like
    the volume's, the head at the top. Pixels are shown at the isocentre (the cone beam's
    magnification divided out), centred on the isocentre in Z, and moved along Y to sit beside
    the volume: from the volume outwards, the lateral X-ray, then the AP X-ray.
    """
    nu, nv = shape if shape is not None else g.detector_px
    du, dv = (p / g.magnification() for p in g.pixel_mm(view))
    gap = XRAY_GAP * g.fov_mm[1]
    width = {v: g.detector_px[0] * g.pixel_mm(v)[0] / g.magnification() for v in ("ap", "lateral")}
    edge = -g.fov_mm[1] / 2 - gap                     # the volume's Y range is centred on 0
    centre = edge - width["lateral"] / 2 if view == "lateral" else edge - width["lateral"] - gap - width["ap"] / 2
    return {"scale": [du, dv], "translate": [centre - (nu - 1) / 2 * du, -(nv - 1) / 2 * dv]}


def xray_sample_layers(size: int = XRAY_SIZE, seed: int = XRAY_SEED) -> list[tuple]:
    """A held-out torso phantom: its AP and lateral X-rays (line integrals, 2D, beside the volume), the
    reference CT (HU) and the tissue labels on the volume's grid (``geometry.affine()``).

    The X-ray layers carry the geometry they were taken with (``geometry``, a dict) and their
    view in the metadata; their ``affine`` is the detector's (what the writer saves, as the
    command line's ``xray_ap.nii.gz``).
    """
    from workbench.tasks.xray2ct.phantoms import LABELS

    case = _xray_case(int(size), int(seed))
    g = case["geometry"]
    aff = g.affine()
    case_id = xray_case_id(size, seed)
    where = f"torso phantom (seed {seed}, {size}^3 voxels of {'x'.join(f'{v:g}' for v in g.voxel_mm)} mm, " \
            f"{g.kind}-beam X-rays; held out from training)"

    def meta(affine, **kw) -> dict:
        return {**dwi_metadata(affine, is_4d=False), "task": "xray2ct", "case": case_id, "origin": where, **kw}

    common = {"axis_labels": ("x", "y", "z"), **spatial_kwargs(aff, 3)}
    out = [(np.asarray(case["ct"], np.float32), {
        "name": "reference CT", **common, "colormap": "gray", "contrast_limits": (-1000.0, 1000.0),
        "metadata": meta(aff, role="reference", units="HU")}, "image")]
    out.append((np.asarray(case["labels"], np.int32), {
        "name": "tissue labels", **common, "opacity": 0.4, "visible": False,
        "metadata": meta(aff, role="labels", label_names=dict(LABELS))}, "labels"))
    xrays = np.asarray(case["xrays"], np.float32)
    top = float(np.percentile(xrays, 99.9))
    for k, view in enumerate(g.views):
        out.append((xrays[k], {
            "name": XRAY_NAMES[view], "axis_labels": ("y", "z"), **xray_placement(g, view), "colormap": "gray",
            "contrast_limits": (0.0, top),
            "metadata": meta(g.image_affine(view), role=XRAY_ROLES[view], view=view, geometry=g.to_dict(),
                             units="line integral")}, "image"))
    return out


def make_xray2ct_sample() -> list[tuple]:
    """npe2 sample-data hook: a held-out torso phantom with its AP and lateral X-rays."""
    return xray_sample_layers()
