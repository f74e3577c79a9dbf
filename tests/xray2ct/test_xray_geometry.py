"""The X-ray projector (known line integrals, view orientation, cone-beam magnification), noise and lifting."""

import math

import numpy as np
import pytest
import torch

from workbench.tasks.xray2ct.geometry import (XrayGeometry, add_photon_noise, backproject, default_geometry,
                                              detector_coordinates, hu_to_mu, lift, project)


def _box(g, lo, hi, value=0.02):
    v = torch.zeros(1, 1, g.size, g.size, g.size, dtype=torch.float64)
    v[:, :, lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = value
    return v


def test_parallel_line_integral_of_a_box_is_its_depth_times_mu():
    g = default_geometry(33)                       # odd size: voxel centres off the detector's centre line
    v = _box(g, (5, 7, 3), (30, 20, 31), 0.02)
    p = project(v, g).numpy()[0]
    vx, vy, vz = g.voxel_mm
    assert p[0, 10, 10] == pytest.approx(0.02 * 13 * vy, rel=1e-6)        # AP: through Y rows 7..19
    assert p[1, 10, 10] == pytest.approx(0.02 * 25 * vx, rel=1e-6)        # lateral: through X rows 5..29
    assert p[0, 2, 10] == 0 and p[0, 10, 1] == 0                          # outside the box's shadow


def test_projection_is_exactly_a_voxel_sum_in_parallel_beam():
    g = default_geometry(20)
    vol = torch.rand(1, 1, 20, 20, 20, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    p = project(vol, g)[0]
    assert torch.allclose(p[0], vol[0, 0].sum(1) * g.voxel_mm[1], rtol=1e-10)
    assert torch.allclose(p[1], vol[0, 0].sum(0) * g.voxel_mm[0], rtol=1e-10)


def test_view_orientation_parallel():
    """AP: (u, v) = (X, Z); lateral: (u, v) = (Y, Z)."""
    g = default_geometry(32)
    v = torch.zeros(1, 1, 32, 32, 32)
    v[0, 0, 25, 6, 19] = 1.0
    p = project(v, g)[0]
    assert np.unravel_index(int(p[0].argmax()), (32, 32)) == (25, 19)
    assert np.unravel_index(int(p[1].argmax()), (32, 32)) == (6, 19)


def test_cone_beam_magnifies_toward_the_source_and_integrates_oblique_rays():
    g = XrayGeometry(kind="cone", size=32, detector_px=(48, 48))
    # a slab filling the whole field laterally, 8 voxels deep along Y: every AP ray crosses 8 planes
    v = _box(g, (0, 12, 0), (32, 20, 32), 0.02)
    p = project(v, g)[0, 0].numpy()
    du, dv = g.pixel_mm("ap")
    i, j = 30, 20
    u, w = (i + 0.5 - 24) * du, (j + 0.5 - 24) * dv
    expected = 0.02 * 8 * g.voxel_mm[1] * math.sqrt(1 + (u / g.sdd_mm) ** 2 + (w / g.sdd_mm) ** 2)
    assert p[i, j] == pytest.approx(expected, rel=1e-5)
    # a point near the source (anterior, +Y) lands farther from the centre than one near the detector
    def spot(y_index):
        m = torch.zeros(1, 1, 32, 32, 32)
        m[0, 0, 28, y_index, 16] = 1.0
        return int(np.unravel_index(int(project(m, g)[0, 0].argmax()), (48, 48))[0])
    assert spot(30) > spot(2) > 24
    c = detector_coordinates(g, "ap", 32)     # the lifting agrees with the projector on where a voxel lands
    for y in (2, 30):
        u_norm = float(c[28, y, 16, 1])
        assert int((u_norm + 1) / 2 * 48) == spot(y)


def test_lift_spreads_a_pixel_along_its_ray():
    g = default_geometry(16)
    img = torch.zeros(1, 1, 16, 16)
    img[0, 0, 4, 11] = 1.0
    vol = lift(img, detector_coordinates(g, "ap", 16))[0, 0]
    assert torch.allclose(vol[4, :, 11], torch.ones(16))         # the whole ray along Y
    assert float(vol.sum()) == pytest.approx(16.0)
    lat = lift(img, detector_coordinates(g, "lateral", 16))[0, 0]
    assert torch.allclose(lat[:, 4, 11], torch.ones(16))          # lateral rays run along X


def test_backprojection_recovers_a_uniform_field():
    g = default_geometry(16)
    mu = torch.full((1, 1, 16, 16, 16), 0.02)
    bp = backproject(project(mu, g), g)
    assert torch.allclose(bp, mu, rtol=1e-5)


def test_photon_noise_is_poisson_in_intensity_and_seeded():
    p = torch.full((2, 64, 64), 2.0)
    a = add_photon_noise(p, 1e4, torch.Generator().manual_seed(1))
    b = add_photon_noise(p, 1e4, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    counts = 1e4 * torch.exp(-a.double())
    mean = 1e4 * math.exp(-2.0)
    assert float(counts.mean()) == pytest.approx(mean, rel=0.01)
    assert float(counts.var()) == pytest.approx(mean, rel=0.1)            # Poisson: variance = mean
    assert torch.equal(add_photon_noise(p, 0), p)


def test_hu_to_mu_and_geometry_round_trip():
    assert float(hu_to_mu(np.array(0.0))) == pytest.approx(0.0193)
    assert float(hu_to_mu(np.array(-1000.0))) == 0.0
    assert float(hu_to_mu(np.array(-1500.0))) == 0.0
    g = XrayGeometry(kind="cone", size=64)
    assert XrayGeometry.from_dict(g.to_dict()) == g
    assert g.same_beams(g.with_size(128)) and not g.same_beams(default_geometry(64))
    aff = g.affine()
    assert aff[0, 0] < 0 < aff[1, 1]                                     # LAS: X runs to the patient's left
    centre = aff @ np.array([31.5, 31.5, 31.5, 1.0])
    assert np.allclose(centre[:3], 0)
    with pytest.raises(ValueError, match="parallel"):
        XrayGeometry(kind="fan")


def test_projection_is_differentiable():
    g = default_geometry(16)
    mu = torch.full((1, 1, 16, 16, 16), 0.01, requires_grad=True)
    project(mu, g).sum().backward()
    # each voxel is crossed by one ray per view: d(sum)/d(mu) = vy + vx
    assert torch.allclose(mu.grad, torch.full_like(mu, g.voxel_mm[0] + g.voxel_mm[1]))


@pytest.mark.parametrize("kind, size, tolerance", [("parallel", 32, 1e-3), ("cone", 64, 0.025)])
def test_our_projector_agrees_with_diffdrrs_siddon_renderer(kind, size, tolerance):
    """diffdrr (exact ray-voxel intersections) and our Joseph projector give the same X-rays, same orientation."""
    from workbench.tasks.xray2ct.drr import render
    from workbench.tasks.xray2ct.geometry import project_hu
    from workbench.tasks.xray2ct.phantoms import simulate_phantom

    g = default_geometry(size, kind)       # cone: Joseph's interpolation differs from Siddon by ~1% at 64^3
    hu = simulate_phantom(5, size)[0]
    theirs, ours = render(hu, g.affine(), g), project_hu(hu, g)
    for k in range(2):
        assert np.abs(theirs[k] - ours[k]).mean() / ours[k].mean() < tolerance
        flipped = ours[k][::-1]                                       # a mirrored image would not agree
        assert np.abs(theirs[k] - flipped).mean() / ours[k].mean() > 3 * tolerance
