"""The stage-1 network (lifting along the rays, deep supervision), the training batches and the objective."""

import numpy as np
import pytest
import torch

from workbench.models import MODELS
from workbench.tasks.xray2ct.data import hu_to_unit, unit_to_hu
from workbench.tasks.xray2ct.geometry import LINE_INTEGRAL_SCALE, default_geometry, detector_coordinates, project
from workbench.tasks.xray2ct.training import (CaseParams, XraySampler, apply_case, projection_consistency,
                                              unit_to_mu, xray2ct_step)


def _net(g, **kw):
    net = MODELS["biplanar_lift"](output_grid=g.size, base_filters=4, view_channels=4, **kw)
    net.set_geometry([[detector_coordinates(g, v, grid) for v in g.views] for grid in net.grids])
    return net


@pytest.mark.parametrize("size", [16, 20])
def test_outputs_at_three_scales(size):
    g = default_geometry(size)
    net = _net(g)
    x = torch.rand(2, 2, size, size)
    outs = net(x, None, all_scales=True)
    assert [tuple(o.shape) for o in outs] == [(2, 1, size // 4, size // 4, size // 4),
                                              (2, 1, size // 2, size // 2, size // 2), (2, 1, size, size, size)]
    assert torch.equal(net(x), outs[-1])


def test_refuses_bad_inputs_and_missing_geometry():
    g = default_geometry(16)
    net = _net(g)
    with pytest.raises(ValueError, match=r"\(B, 2, U, V\)"):
        net(torch.rand(1, 1, 16, 16))
    fresh = MODELS["biplanar_lift"](output_grid=16, base_filters=4, view_channels=4)
    with pytest.raises(RuntimeError, match="set_geometry"):
        fresh(torch.rand(1, 2, 16, 16))
    with pytest.raises(ValueError, match="multiple of 4"):
        MODELS["biplanar_lift"](output_grid=18)


def test_lifted_features_follow_the_rays():
    """A change in one AP pixel can only change voxels on that pixel's ray at the finest lifted level."""
    g = default_geometry(16)
    net = _net(g)
    lift = net.lift2[0]                                   # finest level, AP view
    img = torch.zeros(1, 1, 16, 16)
    img[0, 0, 5, 9] = 1
    vol = net._lift(img, lift)[0, 0]
    assert set(map(tuple, torch.nonzero(vol)[:, [0, 2]].tolist())) == {(5, 9)}


def test_weights_hold_no_geometry_and_a_rebuilt_geometry_reproduces_the_output():
    g = default_geometry(16, "cone")
    a = _net(g)
    assert not any(k.startswith("lift") for k in a.state_dict())       # small checkpoints
    b = MODELS["biplanar_lift"](output_grid=16, base_filters=4, view_channels=4)
    b.load_state_dict(a.state_dict())
    with pytest.raises(RuntimeError, match="set_geometry"):
        b(torch.rand(1, 2, 16, 16))
    b.set_geometry([[detector_coordinates(g, v, grid) for v in g.views] for grid in b.grids])
    x = torch.rand(1, 2, 16, 16)
    assert torch.equal(a(x), b(x))


def test_sampler_projects_the_volume_it_returns():
    g = default_geometry(16)
    rng = np.random.default_rng(0)
    vols = [rng.uniform(-1000, 500, (16, 16, 16)).astype(np.int16) for _ in range(3)]
    s = XraySampler(vols, [0, 1], [2], g)
    b = s.sample(2, torch.Generator().manual_seed(3))
    clean = project(unit_to_mu(b.target), g) / LINE_INTEGRAL_SCALE
    assert b.input.shape == (2, 2, 16, 16) and b.target.shape == (2, 1, 16, 16, 16)
    assert float((b.input - clean).abs().mean()) < 0.01             # only photon noise between them
    again = s.sample(2, torch.Generator().manual_seed(3))
    assert torch.equal(again.input, b.input) and torch.equal(again.target, b.target)
    val = s.validation_batches()
    assert torch.equal(val[0].input, s.validation_batches()[0].input)


def test_apply_case_is_deterministic_mirror_and_scale():
    hu = np.arange(8 * 8 * 8, dtype=np.float32).reshape(8, 8, 8) - 200
    out = apply_case(hu, CaseParams(0, True, 1.0, 1e5, 0))
    assert np.allclose(unit_to_hu(out), hu[::-1], atol=1e-3)
    scaled = unit_to_hu(apply_case(hu, CaseParams(0, False, 1.02, 1e5, 0)))
    assert np.allclose(scaled, (hu + 1000) * 1.02 - 1000, atol=1e-2)
    assert hu_to_unit(-1000.0) == 0 and hu_to_unit(1000.0) == 1


def test_projection_consistency_is_zero_for_the_truth():
    g = default_geometry(16)
    t = torch.rand(1, 1, 16, 16, 16)
    x = project(unit_to_mu(t), g) / LINE_INTEGRAL_SCALE
    assert float(projection_consistency(t, x, g)) < 1e-6
    assert float(projection_consistency(t * 0.5, x, g)) > 0.05


def test_step_reports_every_term_and_backpropagates():
    from workbench.loss_weights import CompositeLoss
    from workbench.training.steps import StepContext

    g = default_geometry(16)
    net = _net(g)
    vols = [np.random.default_rng(k).uniform(-1000, 500, (16, 16, 16)).astype(np.int16) for k in range(2)]
    batch = XraySampler(vols, [0, 1], [0], g).sample(2, torch.Generator().manual_seed(0))
    crit = CompositeLoss({"l1": 1.0, "ssim": 0.5, "edge": 0.1, "multiscale": 0.3, "projection": 0.1})
    out = xray2ct_step(net, batch, StepContext(crit, torch.Generator(), True, 0), geometry=g)
    assert {"l1", "ssim", "edge", "multiscale", "projection"} <= set(out.terms)
    out.loss.backward()
    assert net.heads[0].weight.grad.abs().sum() > 0                  # the coarse head learns from deep supervision
    crit.weights.set("multiscale", 0.0)
    crit.weights.set("projection", 0.0)
    net.zero_grad()
    out = xray2ct_step(net, batch, StepContext(crit, torch.Generator(), True, 0), geometry=g)
    out.loss.backward()
    assert net.heads[0].weight.grad is None or float(net.heads[0].weight.grad.abs().sum()) == 0
