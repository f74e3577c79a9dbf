"""The SR network: PixelShuffle-3D, shapes on odd grids, tricubic start, learning, registry."""

import pytest
import torch
import torch.nn.functional as F

from workbench.models import MODELS, build_model
from workbench.models.sr import RRDBSuperResNet, pixel_shuffle_nd, stage_factors
from workbench.resample import upsample


def test_pixel_shuffle_nd_matches_torch_in_2d():
    x = torch.randn(2, 3 * 4, 5, 7)
    assert torch.equal(pixel_shuffle_nd(x, (2, 2)), F.pixel_shuffle(x, 2))


def test_pixel_shuffle_3d_places_each_channel_in_its_subvoxel():
    x = torch.arange(8.0).reshape(1, 8, 1, 1, 1)
    y = pixel_shuffle_nd(x, (2, 2, 2))[0, 0]
    assert y.shape == (2, 2, 2)
    assert [float(y[i, j, k]) for i in range(2) for j in range(2) for k in range(2)] == list(range(8))


def test_stage_factors():
    assert stage_factors((4, 4, 4)) == [(2, 2, 2), (2, 2, 2)]
    assert stage_factors((8, 8, 1)) == [(2, 2, 1)] * 3
    with pytest.raises(ValueError, match="powers of two"):
        stage_factors((3, 3, 3))


@pytest.mark.parametrize("scale", [2, 4, (4, 4, 1)])
def test_output_lands_on_the_hr_grid_for_odd_shapes(scale):
    net = RRDBSuperResNet(scale=scale, base_filters=8, growth=4, num_blocks=1)
    x = torch.rand(1, 1, 9, 10, 11)
    y = net(x)
    s = net.scale
    assert y.shape == (1, 1, 9 * s[0], 10 * s[1], 11 * s[2])


def test_untrained_network_is_exactly_tricubic():
    net = RRDBSuperResNet(scale=2, base_filters=8, growth=4, num_blocks=1)
    x = torch.rand(1, 1, 6, 7, 8)
    assert torch.allclose(net(x), upsample(x, (2, 2, 2), "cubic"), atol=1e-6)


def test_registered_and_built_from_a_config_with_options():
    from workbench.tasks import get_task

    cfg = get_task("sr").default_config(scale=2)
    net = build_model(cfg.model, in_channels=1, out_channels=1, scale=2, spatial_dims=3)
    assert isinstance(net, RRDBSuperResNet) and MODELS["rrdb_sr"] is RRDBSuperResNet
    assert net.scale == (2, 2, 2) and net.num_blocks == cfg.model.options["num_blocks"]
    with pytest.raises(ValueError, match="spatial_dims"):
        RRDBSuperResNet(spatial_dims=2)


def test_a_few_steps_reduce_the_error_of_a_learnable_mapping():
    """Sharp edges that tricubic blurs: the network must beat its own tricubic start."""
    torch.manual_seed(0)
    hr = (torch.rand(4, 1, 4, 4, 4) > 0.5).float().repeat_interleave(4, 2).repeat_interleave(4, 3).repeat_interleave(4, 4)
    hr = hr[..., :16, :16, :16]
    lr = F.avg_pool3d(hr, 2)
    net = RRDBSuperResNet(scale=2, base_filters=8, growth=4, num_blocks=1, use_cbam=False)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    start = float(F.l1_loss(net(lr), hr))
    for _ in range(40):
        opt.zero_grad()
        loss = F.l1_loss(net(lr), hr)
        loss.backward()
        opt.step()
    assert float(F.l1_loss(net(lr), hr)) < 0.8 * start


def test_attention_maps_come_from_the_cbam_block():
    from workbench.models import collect_attention_maps

    net = RRDBSuperResNet(scale=2, base_filters=8, growth=4, num_blocks=1)
    maps = collect_attention_maps(net, torch.rand(1, 1, 8, 8, 8), torch.zeros(1, dtype=torch.long))
    assert list(maps) == ["attention"] and maps["attention"].shape == (1, 1, 8, 8, 8)


def test_attention_map_of_the_trunk_equals_the_hooked_cbam_map():
    from workbench.models import collect_attention_maps

    torch.manual_seed(0)
    net = RRDBSuperResNet(scale=2, base_filters=8, growth=4, num_blocks=1)
    x = torch.rand(1, 1, 7, 8, 9)
    hooked = collect_attention_maps(net, x, torch.zeros(1, dtype=torch.long))["attention"]
    assert torch.allclose(net.attention_map(x), hooked, atol=1e-6)
    assert RRDBSuperResNet(scale=2, base_filters=8, growth=4, num_blocks=1, use_cbam=False).attention_map(x) is None
