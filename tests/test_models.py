"""Tests of the model contract (docs/CONTRIBUTING_CORE.md) for every registered network."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from workbench.models import (MODELS, ConditionedReconNet, FrequencyDomainNet, build_model, collect_attention_maps,
                              model_summary)
from workbench.models.blocks import (CBAM3d, AdaptiveSkip, FactorizedConv3d, FiLM, GatedBlock, SinusoidalEncoding,
                                     UpBlock, crop_to, pad_to_multiple)

#: the conditioned reconstruction networks of docs/CONTRIBUTING_CORE.md (the SR and DOT networks have their own tests)
NAMES = sorted(n for n, cls in MODELS.items() if issubclass(cls, ConditionedReconNet))
SMALL = dict(base_filters=4, embedding_dim=8)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def make(name, in_channels=5, num_conditions=4, seed=0, **kw):
    torch.manual_seed(seed)
    args = dict(SMALL)
    args.update(kw)
    return MODELS[name](in_channels, num_conditions=num_conditions, **args)


def perturb_(model: nn.Module, scale: float = 0.2, seed: int = 1) -> nn.Module:
    """Move every parameter away from its initialisation (FiLM starts as identity, heads near zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return model


def inputs(b, c, shape, num_conditions, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((b, c) + tuple(shape), generator=g)
    cond = torch.randint(0, num_conditions, (b,), generator=g)
    return x, cond


# ----------------------------------------------------------------------------- shapes and channels
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(8, 9, 10), (33, 34, 35), (4, 4, 4), (5, 7, 4)])
@pytest.mark.parametrize("volumes,priors", [(2, 1), (100, 2)])
def test_output_shape_odd_sizes_and_channel_counts(name, shape, volumes, priors):
    c = volumes + priors
    b = 1 if volumes == 100 and shape == (33, 34, 35) else 2
    model = make(name, in_channels=c, num_conditions=volumes, residual_channel=c - 1)
    x, cond = inputs(b, c, shape, volumes)
    cond[-1] = volumes - 1
    y = model(x, cond)
    assert y.shape == (b, 1) + shape
    assert y.dtype == torch.float32 and torch.isfinite(y).all()


@pytest.mark.parametrize("name", NAMES)
def test_multiple_output_channels(name):
    model = make(name, in_channels=6, out_channels=2, residual_channel=3)
    x, cond = inputs(1, 6, (6, 7, 8), 4)
    y = model(x, cond)
    assert y.shape == (1, 2, 6, 7, 8)
    assert torch.allclose(y, x[:, 3:5], atol=0.05)


@pytest.mark.parametrize("name", NAMES)
def test_padding_is_replicate_at_far_end_and_cropped_back(name):
    """An odd input is padded by replicating its last slice: feeding the padded input
    ourselves must give exactly the same values on the original voxels."""
    model = perturb_(make(name)).eval()
    x, cond = inputs(1, 5, (9, 7, 5), 4)
    x_even = F.pad(x, (0, 1, 0, 1, 0, 1), mode="replicate")
    with torch.no_grad():
        y = model(x, cond)
        y_even = model(x_even, cond)
    assert torch.allclose(y, crop_to(y_even, (9, 7, 5)), atol=1e-5)
    # and the padded voxels really are cropped, not kept
    assert y_even.shape[-3:] == (10, 8, 6) and y.shape[-3:] == (9, 7, 5)


# ----------------------------------------------------------------------------- gradients and conditioning
@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_first_layer_and_every_parameter(name):
    model = make(name, residual_channel=4)
    x, cond = inputs(2, 5, (8, 9, 10), 4)
    target = torch.randn(2, 1, 8, 9, 10)
    F.mse_loss(model(x, cond), target).backward()
    first = [m for m in model.modules() if isinstance(m, nn.Conv3d) and m.in_channels == 5]
    assert first, "no layer consumes the input"
    for conv in first:
        assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} gets no gradient"
        assert torch.isfinite(p.grad).all(), pname
    film_grads = [p.grad.abs().sum() for n, p in model.named_parameters() if ".film." in n]
    assert film_grads and all(g > 0 for g in film_grads), "FiLM (conditioning) layers do not learn"


@pytest.mark.parametrize("name", NAMES)
def test_condition_changes_output(name):
    model = make(name, num_conditions=10).eval()
    x, _ = inputs(1, 5, (8, 8, 8), 10)
    with torch.no_grad():
        # FiLM starts as the identity: a fresh model ignores the condition
        assert torch.allclose(model(x, torch.tensor([0])), model(x, torch.tensor([7])), atol=1e-6)
        perturb_(model)
        a, b = model(x, torch.tensor([0])), model(x, torch.tensor([7]))
        c = model(x, torch.tensor([0]))
    assert torch.equal(a, c)
    assert (a - b).abs().mean() > 1e-3 * a.abs().mean()


@pytest.mark.parametrize("name", NAMES)
def test_residual_channel_at_initialisation(name):
    x, cond = inputs(2, 7, (8, 9, 10), 4)
    x = x * 3 + 10  # a realistic non-zero-mean signal
    for k in (0, 2, 6):
        model = make(name, in_channels=7, residual_channel=k)
        with torch.no_grad():
            y = model(x, cond)
        assert (y - x[:, k:k + 1]).abs().max() < 0.05, k
        other = (k + 1) % 7
        assert (y - x[:, other:other + 1]).abs().mean() > 1.0
    # without a residual channel a fresh model predicts (almost) zero
    with torch.no_grad():
        assert make(name, in_channels=7)(x, cond).abs().max() < 0.05


@pytest.mark.parametrize("name", NAMES)
def test_residual_channel_out_of_range(name):
    with pytest.raises(ValueError, match="residual_channel"):
        MODELS[name](4, out_channels=2, residual_channel=3, **SMALL)
    with pytest.raises(ValueError, match="residual_channel"):
        MODELS[name](4, residual_channel=-1, **SMALL)


@pytest.mark.parametrize("name", NAMES)
def test_bad_inputs_raise(name):
    model = make(name)
    x, cond = inputs(2, 5, (4, 4, 4), 4)
    with pytest.raises(ValueError, match="cond values"):
        model(x, torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="shape"):
        model(x[:, :4], cond)
    with pytest.raises(ValueError, match="cond"):
        model(x, cond[:1])
    with pytest.raises(TypeError):
        model(x, cond.float())


# ----------------------------------------------------------------------------- CBAM and attention maps
@pytest.mark.parametrize("name", NAMES)
def test_without_cbam(name):
    with_cbam = make(name, use_cbam=True)
    model = make(name, use_cbam=False)
    assert not any(isinstance(m, CBAM3d) for m in model.modules())
    assert sum(isinstance(m, CBAM3d) for m in with_cbam.modules()) >= 1
    assert model_summary(model)["parameters"] < model_summary(with_cbam)["parameters"]
    x, cond = inputs(1, 5, (7, 8, 9), 4)
    assert model(x, cond).shape == (1, 1, 7, 8, 9)
    assert collect_attention_maps(model, x, cond) == {}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(8, 9, 10), (12, 12, 12)])
def test_attention_maps(name, shape):
    model = perturb_(make(name))
    x, cond = inputs(2, 5, shape, 4)
    with torch.no_grad():
        expected = model(x, cond)
    maps, out = collect_attention_maps(model, x, cond, return_output=True)
    cbam_names = [n for n, m in model.named_modules() if isinstance(m, CBAM3d)]
    assert cbam_names and sorted(maps) == sorted(cbam_names)
    for key, m in maps.items():
        assert m.shape == (2, 1) + shape, key
        assert not m.requires_grad
        assert m.min() >= 0 and m.max() <= 1, key
        assert m.std() > 0, f"{key} is constant"
    assert torch.equal(out, expected)
    with torch.no_grad():
        assert torch.equal(model(x, cond), expected)
    assert all(not m._forward_hooks for m in model.modules()), "hooks left behind"
    raw = collect_attention_maps(model, x, cond, resize=False)
    assert sorted(raw) == sorted(maps)
    for key, m in raw.items():
        assert m.shape[:2] == (2, 1) and m.dim() == 5


def test_attention_map_is_spatial_gate_output():
    model = make("denoiser")
    x, cond = inputs(1, 5, (8, 8, 8), 4)
    seen = {}
    h = model.cbam1.spatial_gate.register_forward_hook(lambda m, i, o: seen.setdefault("map", o.detach()))
    with torch.no_grad():
        model(x, cond)
    h.remove()
    maps = collect_attention_maps(model, x, cond)
    assert torch.equal(maps["cbam1"], seen["map"])


def test_attention_maps_under_grad_mode_do_not_build_graph():
    model = make("multiscale")
    x, cond = inputs(1, 5, (8, 8, 8), 4)
    x.requires_grad_(True)
    maps, out = collect_attention_maps(model, x, cond, return_output=True)
    assert not out.requires_grad and all(not m.requires_grad for m in maps.values())


# ----------------------------------------------------------------------------- precision and determinism
@pytest.mark.parametrize("name", NAMES)
def test_bfloat16_autocast_forward(name):
    model = perturb_(make(name, base_filters=8), scale=0.1).eval()
    x, cond = inputs(2, 5, (9, 8, 7), 4)
    with torch.no_grad():
        ref = model(x, cond)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = model(x, cond)
    assert y.shape == ref.shape and y.dtype == torch.float32
    assert torch.isfinite(y).all()
    rel = (y - ref).norm() / ref.norm()
    assert rel < 0.1, float(rel)


@pytest.mark.parametrize("name", NAMES)
def test_input_cast_with_the_layout_change_is_exact_under_autocast(name, monkeypatch):
    """prepare() copies the input straight to bfloat16 under autocast (half the bytes): the
    output is bit-identical to the float32 copy the first convolution would cast itself, and
    the float32 residual channel is not rounded."""
    model = perturb_(make(name, base_filters=8, residual_channel=1), scale=0.1).eval()
    x, cond = inputs(1, 5, (9, 8, 7), 4)
    x[:, 1] += 1000.0 + torch.rand(x.shape[2:]) * 1e-3  # a residual that bfloat16 would round away
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        xp, _ = model.prepare(x)
        y = model(x, cond)
        monkeypatch.setattr(type(model), "prepare", lambda self, t: (
            pad_to_multiple(t, self.size_multiple)[0].contiguous(memory_format=torch.channels_last_3d),
            tuple(t.shape[2:])))
        ref = model(x, cond)
    if name != "frequency":  # it keeps its own float32 prepare (the low band is pooled first)
        assert xp.dtype == torch.bfloat16 and xp.is_contiguous(memory_format=torch.channels_last_3d)
    assert torch.equal(y, ref)


@pytest.mark.parametrize("name", NAMES)
def test_bfloat16_autocast_backward(name):
    model = make(name, base_filters=8, residual_channel=0)
    x, cond = inputs(1, 5, (8, 8, 8), 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(x, cond)
    y.float().square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_eval_mode_determinism(name):
    model = perturb_(make(name)).eval()
    x, cond = inputs(2, 5, (7, 8, 9), 4)
    with torch.no_grad():
        assert torch.equal(model(x, cond), model(x, cond))
    torch.manual_seed(123)
    a = make(name, seed=5)
    b = make(name, seed=5)
    with torch.no_grad():
        assert torch.equal(a(x, cond), b(x, cond))


# ----------------------------------------------------------------------------- registry and build
def test_registry_contents():
    assert set(MODELS) == {"denoiser", "multiscale", "progressive", "frequency", "rrdb_sr", "sr3", "dot_net",
                           "biplanar_lift", "estimate_fusion"}
    assert set(NAMES) == {"denoiser", "multiscale", "progressive", "frequency"}


def test_unknown_model_lists_known_names():
    cfg = SimpleNamespace(name="unet9000", base_filters=4, embedding_dim=8, use_cbam=True)
    with pytest.raises(ValueError) as info:
        build_model(cfg, in_channels=3)
    assert str(info.value) == ("unknown model 'unet9000'; known models: "
                               "biplanar_lift, denoiser, dot_net, estimate_fusion, frequency, multiscale, progressive, rrdb_sr, sr3")


@pytest.mark.parametrize("name", NAMES)
def test_build_model_maps_config(name):
    from workbench.config import ModelConfig

    cfg = ModelConfig(name=name, base_filters=8, embedding_dim=6, use_cbam=False)
    model = build_model(cfg, in_channels=9, out_channels=1, num_conditions=7, residual_channel=8)
    assert isinstance(model, MODELS[name])
    s = model_summary(model)
    assert (s["in_channels"], s["num_conditions"], s["base_filters"], s["embedding_dim"]) == (9, 7, 8, 6)
    assert s["use_cbam"] is False and s["residual_channel"] == 8 and s["cbam_blocks"] == []
    assert model.cond_embedding.encoding.embedding_dim == 6


def test_models_do_not_import_config():
    code = "import sys, workbench.models; print('workbench.config' in sys.modules)"
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("name", NAMES)
def test_default_size_and_summary(name):
    model = MODELS[name](67, num_conditions=64, residual_channel=65)
    s = model_summary(model)
    assert s["parameters"] == sum(p.numel() for p in model.parameters())
    assert 50_000 <= s["parameters"] <= 400_000, s["parameters"]
    assert s["class"] == MODELS[name].__name__ and len(s["cbam_blocks"]) >= 1
    assert MODELS[name].__doc__ and "Parameters" in MODELS[name].__doc__


# ----------------------------------------------------------------------------- model-specific structure
def test_progressive_stages_sum_to_output():
    model = perturb_(make("progressive", residual_channel=1)).eval()
    x, cond = inputs(1, 5, (9, 8, 7), 4)
    with torch.no_grad():
        st = model.forward_stages(x, cond)
        y = model(x, cond)
    assert torch.allclose(st["output"], y, atol=1e-6)
    assert torch.allclose(st["coarse"] + st["details"], y, atol=1e-6)
    assert st["details"].abs().mean() > 0 and (st["coarse"] - x[:, 1:2]).abs().mean() > 0


def test_frequency_bands_reconstruct_input():
    x = torch.randn(2, 3, 8, 6, 10)
    low, high = FrequencyDomainNet.split_bands(x)
    assert low.shape == (2, 3, 4, 3, 5)
    up = F.interpolate(low, size=(8, 6, 10), mode="trilinear", align_corners=False)
    assert torch.allclose(up + high, x, atol=1e-6)
    # a constant volume has no high-frequency content
    _, high_c = FrequencyDomainNet.split_bands(torch.full((1, 1, 8, 8, 8), 3.0))
    assert high_c.abs().max() < 1e-6


# ----------------------------------------------------------------------------- blocks
@pytest.mark.parametrize("size,multiple", [((33, 34, 35), 2), ((8, 9, 10), 4), ((4, 4, 4), 2), ((5, 6, 7), 8)])
def test_pad_to_multiple_and_crop(size, multiple):
    x = torch.randn((1, 2) + size)
    xp, orig = pad_to_multiple(x, multiple)
    assert orig == size
    assert all(s % multiple == 0 and s - o < multiple for s, o in zip(xp.shape[-3:], size))
    assert torch.equal(crop_to(xp, orig), x)
    # replicate padding: the padded voxels copy the last slice
    assert torch.equal(xp[:, :, -1, : size[1], : size[2]], x[:, :, -1])


def test_factorized_conv_kernels():
    conv = FactorizedConv3d(5, 6, kernel_size=3)
    shapes = [tuple(m.weight.shape) for m in conv.modules() if isinstance(m, nn.Conv3d)]
    assert shapes == [(6, 5, 3, 1, 1), (6, 6, 1, 3, 1), (6, 6, 1, 1, 3)]
    assert conv(torch.randn(1, 5, 7, 8, 9)).shape == (1, 6, 7, 8, 9)
    # impulse response is separable and confined to a 3x3x3 neighbourhood
    imp = torch.zeros(1, 5, 9, 9, 9)
    imp[0, 0, 4, 4, 4] = 1
    with torch.no_grad():
        r = (conv(imp) - conv(torch.zeros_like(imp))).abs().sum(1)[0]
    assert r[3:6, 3:6, 3:6].sum() > 0 and r.sum() == pytest.approx(float(r[3:6, 3:6, 3:6].sum()))
    with pytest.raises(ValueError):
        FactorizedConv3d(2, 2, kernel_size=4)


def test_sinusoidal_encoding_formula():
    enc = SinusoidalEncoding(8)
    idx = torch.tensor([0, 1, 5, 99])
    e = enc(idx)
    assert e.shape == (4, 8)
    for row, j in zip(e, idx.tolist()):
        for i in range(4):
            w = 10_000 ** (-i / 4)
            assert row[i] == pytest.approx(math.sin(j * w), abs=1e-5)
            assert row[4 + i] == pytest.approx(math.cos(j * w), abs=1e-5)
    assert len({tuple(r.tolist()) for r in enc(torch.arange(100))}) == 100  # distinct codes
    assert SinusoidalEncoding(7)(idx).shape == (4, 7)


def test_film_identity_at_init_then_modulates():
    film = FiLM(6, 3)
    x, emb = torch.randn(2, 3, 4, 4, 4), torch.randn(2, 6)
    assert torch.equal(film(x, emb), x)
    with torch.no_grad():
        film.proj.bias[:3] = 1.0  # gamma = 1 -> scale by 2
        film.proj.bias[3:] = 0.5  # beta
    assert torch.allclose(film(x, emb), 2 * x + 0.5)


def test_cbam_spatial_gate_output_and_gating():
    cbam = CBAM3d(8)
    x = torch.randn(2, 8, 6, 7, 8)
    m = cbam.spatial_gate(x)
    assert m.shape == (2, 1, 6, 7, 8) and m.min() >= 0 and m.max() <= 1
    ca = cbam.channel_gate(x)
    assert ca.shape == (2, 8, 1, 1, 1)
    y = cbam(x)
    assert torch.allclose(y, x * ca * cbam.spatial_gate(x * ca))


def test_gated_block_gate_controls_output():
    block = GatedBlock(4, 4)
    x = torch.randn(1, 4, 6, 6, 6)
    with torch.no_grad():
        block.gate.weight.zero_()
        block.gate.bias.fill_(-1e4)  # gate closed -> pure skip
        assert torch.allclose(block(x), x)
        block.gate.bias.fill_(1e4)  # gate open -> skip + features
        assert not torch.allclose(block(x), x)
    assert GatedBlock(4, 6, embedding_dim=3)(x, torch.randn(1, 3)).shape == (1, 6, 6, 6, 6)


def test_up_block_and_adaptive_skip_channels():
    up = UpBlock(8, 4)
    assert up(torch.randn(1, 8, 3, 4, 5)).shape == (1, 4, 6, 8, 10)
    assert up(torch.randn(1, 8, 3, 4, 5), size=(6, 8, 10)).shape == (1, 4, 6, 8, 10)
    assert not any(isinstance(m, nn.ConvTranspose3d) for m in up.modules())
    skip = AdaptiveSkip(4, 6, 5)
    assert skip.fuse.in_channels == 10
    out = skip(torch.randn(1, 4, 5, 5, 5), torch.randn(1, 6, 5, 5, 5))
    assert out.shape == (1, 5, 5, 5, 5)
    # the attention weight really multiplies the skip: a closed gate removes the skip's effect
    with torch.no_grad():
        skip.attention[-2].weight.zero_()
        skip.attention[-2].bias.fill_(-1e4)
    a = torch.randn(1, 4, 5, 5, 5)
    assert torch.allclose(skip(a, torch.randn(1, 6, 5, 5, 5)), skip(a, torch.randn(1, 6, 5, 5, 5)))


def test_frequency_high_path_sees_high_band_only():
    """The fast high-path stem equals the stem applied to the explicit high-pass band."""
    model = perturb_(make("frequency", base_filters=8)).eval()
    x, cond = inputs(2, 5, (8, 6, 10), 4)
    with torch.no_grad():
        emb = model.cond_embedding(cond)
        low, high = FrequencyDomainNet.split_bands(x)
        fast = model._high_stem(x, low, emb)
        direct = model.high_stem(high, emb)
        assert torch.allclose(fast, direct, atol=1e-5)
        # adding a constant to the input leaves the high band (and the high stem) unchanged
        assert torch.allclose(model._high_stem(x + 5.0, F.avg_pool3d(x + 5.0, 2), emb), direct, atol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_double_precision_model(name):
    model = make(name, residual_channel=2).double()
    x, cond = inputs(1, 5, (5, 6, 7), 4)
    y = model(x.double(), cond)
    assert y.dtype == torch.float64 and y.shape == (1, 1, 5, 6, 7)
    assert torch.allclose(y, x.double()[:, 2:3], atol=0.05)


def test_groupnorm_under_cpu_bf16_autocast_stays_bfloat16_and_channels_last():
    """GroupNorm32 under CPU bfloat16 autocast: bfloat16 out (the following FiLM/SiLU/gates run on half the
    bytes), the input's channels_last_3d layout kept (the next convolution wants it), values and gradients
    equal to float32 GroupNorm within bfloat16 rounding."""
    from workbench.models.utils import norm3d

    torch.manual_seed(0)
    gn = norm3d(24)
    nn.init.normal_(gn.weight)
    nn.init.normal_(gn.bias)
    x = (3 * torch.randn(2, 24, 9, 10, 11) + 1).contiguous(memory_format=torch.channels_last_3d)
    xb = x.bfloat16().detach().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = gn(xb)
    assert y.dtype == torch.bfloat16 and y.is_contiguous(memory_format=torch.channels_last_3d)
    xf = xb.detach().float().requires_grad_()
    ref = F.group_norm(xf, gn.num_groups, gn.weight, gn.bias, gn.eps)
    scale = float(ref.abs().max())
    assert float((y.float() - ref).abs().max()) < 0.02 * scale
    g = torch.randn_like(ref)
    y.float().backward(g)
    ref.backward(g)
    assert float((xb.grad.float() - xf.grad).abs().max()) < 0.03 * float(xf.grad.abs().max())
    # outside autocast the module is plain GroupNorm, dtype and all
    assert gn(x).dtype == torch.float32 and torch.equal(gn(x), F.group_norm(x, gn.num_groups, gn.weight, gn.bias))


def test_cbam_keeps_bfloat16_features_under_autocast():
    """The float32 spatial-attention map must not promote the features to float32 (every later op would
    then run on float32 copies)."""
    cbam = CBAM3d(8)
    x = torch.randn(1, 8, 6, 7, 8).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = cbam(x)
    assert out.dtype == torch.bfloat16


@pytest.mark.parametrize("shape", [(2, 24, 33, 34, 35), (1, 5, 7, 3, 5), (1, 48, 4, 4, 1)])
def test_spatial_mean_max_in_channels_last_equals_the_plain_reduction(shape):
    """CBAM's channel descriptors: the two-step channels-last reduction gives the same max, the
    same mean to float rounding, and the same gradients as ATen's (slow) plain one."""
    from workbench.models.utils import spatial_mean_max

    torch.manual_seed(0)
    x = torch.randn(shape).contiguous(memory_format=torch.channels_last_3d).requires_grad_()
    mean, peak = spatial_mean_max(x)
    assert mean.shape == peak.shape == shape[:2] + (1, 1, 1)
    assert torch.equal(peak, x.amax(dim=(2, 3, 4), keepdim=True))
    assert torch.allclose(mean, x.mean(dim=(2, 3, 4), keepdim=True), atol=1e-6)
    (mean.sum() + 2 * peak.sum()).backward()
    grad = x.grad.clone()
    x.grad = None
    (x.mean(dim=(2, 3, 4)).sum() + 2 * x.amax(dim=(2, 3, 4)).sum()).backward()
    assert torch.allclose(grad, x.grad, atol=1e-7)
    xb = x.detach().bfloat16()  # under autocast the features are bfloat16: same dtype out
    mb, pb = spatial_mean_max(xb)
    assert mb.dtype == pb.dtype == torch.bfloat16 and torch.equal(pb, xb.amax(dim=(2, 3, 4), keepdim=True))
