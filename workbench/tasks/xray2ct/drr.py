"""Realistic test X-rays with ``diffdrr``'s Siddon renderer (Gopalakrishnan & Golland 2022, "Fast
auto-differentiable digitally reconstructed radiographs for solving inverse problems in intraoperative
imaging"), in this task's geometry and units.

The task's own projector (:mod:`.geometry`) samples the 64^3 training grid; diffdrr traces
exact ray-voxel intersections through a volume at its native resolution (e.g. the chest
CT's 0.7 x 0.7 x 2.5 mm voxels), so its images of a real scan carry the detail that a
64^3 resampling loses: the realistic test input the benchmark feeds the networks.

diffdrr is given our attenuation (1/mm) as its density, so its images are line integrals
in our units: on the same volume they agree with :func:`.geometry.project` to 0.02% in
parallel beam (approximated by a source 1 km away) and about 1% in cone beam (Siddon vs
Joseph sampling); a test checks both. Orientation: diffdrr's pose (Euler ZXY, source
translated along +Y) with rotation 0 is our AP view and -pi/2 about Z our lateral view;
its images are transposed and flipped along v into our (u, v).

diffdrr's renderer imports torchio, fastcore and einops (installed by ``scripts/setup.sh``;
not torchvision, which only its metrics module needs).
"""

from __future__ import annotations

import math

import numpy as np

from workbench.io_utils import InputError
from workbench.tasks.xray2ct.geometry import XrayGeometry, hu_to_mu

#: source-isocentre distance that stands in for a parallel beam (rays within 2e-4 rad of parallel)
_FAR_MM = 1.0e6
_ROTATION = {"ap": 0.0, "lateral": -math.pi / 2}


def render(hu: np.ndarray, affine: np.ndarray, g: XrayGeometry) -> np.ndarray:
    """The two X-rays (2, nu, nv) of a HU volume with its NIfTI affine, centred on the isocentre, by diffdrr."""
    try:
        import torch
        from diffdrr.data import read
        from diffdrr.drr import DRR
        from torchio import ScalarImage
    except ImportError as exc:
        raise InputError(f"diffdrr's renderer needs {exc.name}: pip install torchio fastcore einops") from exc

    hu = np.asarray(hu, np.float32)
    subject = read(ScalarImage(tensor=torch.from_numpy(hu)[None], affine=np.asarray(affine, np.float64)),
                   orientation="AP")
    subject.density.set_data(torch.from_numpy(hu_to_mu(hu))[None])
    if g.kind == "cone":
        sdd, sid = g.sdd_mm, g.sid_mm
    else:
        sid = _FAR_MM
        sdd = sid + max(g.fov_mm)
    out = []
    for view in g.views:
        du, dv = g.pixel_mm(view)
        if g.kind != "cone":                 # a parallel pixel pitch is its size at the isocentre
            du, dv = du * sdd / sid, dv * sdd / sid
        drr = DRR(subject, sdd=sdd, height=g.detector_px[1], width=g.detector_px[0], delx=du, dely=dv)
        with torch.no_grad():
            img = drr(torch.tensor([[_ROTATION[view], 0.0, 0.0]]), torch.tensor([[0.0, sid, 0.0]]),
                      parameterization="euler_angles", convention="ZXY")[0, 0]
        out.append(img.numpy().T[:, ::-1])
    return np.ascontiguousarray(np.stack(out), dtype=np.float32)
