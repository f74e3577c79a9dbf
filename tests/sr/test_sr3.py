"""SR3 diffusion super-resolution: noise schedule, sampler, cross-attention switch, EMA resume, CLI."""

import math

import nibabel as nib
import numpy as np
import pytest
import torch

from workbench.cli import main
from workbench.config import save_config
from workbench.io_utils import InputError
from workbench.models.sr3 import SR3UNet
from workbench.tasks import get_task
from workbench.tasks.sr import diffusion, workflow
from workbench.tasks.sr.data import SRPair, SRPairSampler
from workbench.tasks.sr.sr3_predictor import SR3Predictor, interval_factor
from workbench.training.checkpoint import load_checkpoint

TINY = {"channels": [16, 32], "attention_levels": [False, True], "num_head_channels": 16, "context_dim": 16,
        "timesteps": 100}


def run(*argv):
    return main(["--quiet", *map(str, argv)])


def tiny_model(**kw):
    torch.manual_seed(0)
    return SR3UNet(scale=4, **{**TINY, **kw}).eval()


def tiny_config(steps=4, **train):
    cfg = get_task("sr").default_config(model="sr3", scale=4, lr_patch=4)
    cfg.model.options = dict(TINY)
    cfg.data.batch_size = 2
    cfg.train.steps = steps
    cfg.train.val_every = 2
    cfg.train.checkpoint_every = 2
    cfg.train.val_batches = 1
    for k, v in train.items():
        setattr(cfg.train, k, v)
    return cfg


# ------------------------------------------------------------------ noise schedule
def test_cosine_schedule_is_nichol_dhariwal():
    sched = diffusion.noise_scheduler(tiny_model(timesteps=1000))
    t = np.arange(1000)
    f = np.cos(((t + 1) / 1000 + 0.008) / 1.008 * np.pi / 2) ** 2 / np.cos(0.008 / 1.008 * np.pi / 2) ** 2
    # MONAI clips betas at 0.999, which only moves the last steps
    assert np.allclose(sched.alphas_cumprod.numpy()[:990], f[:990], rtol=1e-3, atol=1e-6)
    assert sched.alphas_cumprod[0] > 0.999 and sched.alphas_cumprod[-1] < 1e-4


def test_forward_process_marginals_match_q():
    """x_t of the training step has mean sqrt(abar) x0 and variance 1 - abar (Ho et al. 2020, eq. 4)."""
    model = tiny_model(timesteps=1000)
    sched = diffusion.noise_scheduler(model)
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((4000, 1, 2, 2), 0.7)
    for t_val in (10, 300, 700, 990):
        t = torch.full((4000,), t_val)
        noise = torch.randn(x0.shape, generator=g)
        abar = diffusion.alpha_bar(sched, t)
        x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
        assert torch.allclose(x_t, sched.add_noise(x0, noise, t), atol=1e-5)  # the library's q(x_t | x_0)
        a = float(abar[0])
        assert abs(float(x_t.mean()) - math.sqrt(a) * 0.7) < 4 * math.sqrt((1 - a) / x_t.numel()) + 1e-6
        assert abs(float(x_t.var()) - (1 - a)) < 0.05 * (1 - a) + 1e-6


@pytest.mark.parametrize("prediction", ["v_prediction", "epsilon"])
def test_clean_estimate_inverts_the_target(prediction):
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(3, 1, 8, 8, generator=g), torch.randn(3, 1, 8, 8, generator=g)
    abar = torch.tensor([0.9, 0.5, 0.05]).view(-1, 1, 1, 1)
    x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
    out = eps if prediction == "epsilon" else abar.sqrt() * eps - (1 - abar).sqrt() * x0
    assert torch.allclose(diffusion.clean_estimate(prediction, x_t, out, abar), x0, atol=1e-4)


# ------------------------------------------------------------------ model and sampler
def test_cross_attention_switch():
    on, off = tiny_model(cross_attention=True), tiny_model(cross_attention=False)
    with torch.no_grad():  # MONAI zero-initialises output and attention projections: give them weights
        for p in on.unet.parameters():
            if not p.abs().sum():
                p.normal_(0, 0.1)
    assert on.encoder is not None and off.encoder is None
    lr = torch.rand(2, 1, 6, 6)
    x, t = torch.randn(2, 1, 24, 24), torch.tensor([5, 50])
    with torch.no_grad():
        y_on, y_off = on(x, t, lr), off(x, t, lr)
    assert y_on.shape == y_off.shape == x.shape
    # only the switched-on model attends to the LR tokens: its encoder changes the output
    with torch.no_grad():
        for p in on.encoder.parameters():
            p.add_(0.5)
        assert not torch.allclose(on(x, t, lr), y_on)
    with pytest.raises(RuntimeError):
        off.load_state_dict(on.state_dict())


def test_model_refuses_edges_it_cannot_pool():
    model = SR3UNet(scale=2, **{**TINY, "channels": [16, 16, 32], "attention_levels": [False, False, True]})
    with pytest.raises(ValueError, match="multiples of 4"):
        model(torch.randn(1, 1, 10, 10), torch.tensor([1]), torch.rand(1, 1, 5, 5))


def test_sampler_is_deterministic_per_seed_and_batch_independent():
    model = tiny_model()
    lr = torch.rand(3, 1, 4, 4)
    a = diffusion.sample_slices(model, lr, steps=4, samples=2, seeds=[7, 8, 9])
    b = diffusion.sample_slices(model, lr, steps=4, samples=2, seeds=[7, 8, 9])
    assert a.shape == (2, 3, 1, 16, 16) and torch.equal(a, b)
    one = diffusion.sample_slices(model, lr[1:2], steps=4, samples=2, seeds=[8])
    assert torch.allclose(one[:, 0], a[:, 1], atol=1e-5)  # slice 1 alone == slice 1 in a batch
    c = diffusion.sample_slices(model, lr, steps=4, samples=2, seeds=[17, 8, 9])
    assert not torch.allclose(c[:, 0], a[:, 0]) and torch.allclose(c[:, 1], a[:, 1], atol=1e-5)
    assert not torch.allclose(a[0], a[1])  # K samples differ


def test_sampler_cancels():
    from workbench.tasks.base import Cancelled

    calls = []
    with pytest.raises(Cancelled):
        diffusion.sample_slices(tiny_model(), torch.rand(1, 1, 4, 4), steps=5, progress=lambda: calls.append(1),
                                should_stop=lambda: len(calls) >= 2)
    assert len(calls) == 2


# ------------------------------------------------------------------ data
def _pair(seed=0, shape=(8, 8, 5), scale=(4, 4, 1)):
    rng = np.random.default_rng(seed)
    hr = rng.random(tuple(s * f for s, f in zip(shape, scale))).astype(np.float32)
    lr = hr.reshape(shape[0], scale[0], shape[1], scale[1], shape[2]).mean(axis=(1, 3))
    return SRPair.from_arrays(lr, hr, scale, f"p{seed}")


def test_slice_sampler_gives_2d_batches_and_seeded_photometric_augmentation():
    pairs = [_pair(0), _pair(1)]
    plain = SRPairSampler(pairs, [], (4, 4, 1), lr_patch=4, slices=True)
    aug = SRPairSampler(pairs, [], (4, 4, 1), lr_patch=4, slices=True, photometric=True)
    b = plain.sample(16, torch.Generator().manual_seed(3))
    assert b.input.shape == (16, 1, 4, 4) and b.target.shape == (16, 1, 16, 16)
    a1, a2 = (aug.sample(16, torch.Generator().manual_seed(3)) for _ in range(2))
    assert torch.equal(a1.input, a2.input) and torch.equal(a1.target, a2.target)
    params = [aug.sample_params(torch.Generator().manual_seed(s), pairs) for s in range(200)]
    assert 0.2 < np.mean([p.noise_std > 0 for p in params]) < 0.4
    assert 0.1 < np.mean([p.blur_sigma > 0 for p in params]) < 0.3
    assert all(0.85 <= p.gain <= 1.15 and -0.1 <= p.offset <= 0.1 for p in params)
    val = aug.validation_batches()[0]  # validation is never augmented
    assert val.input.dim() == 4 and torch.equal(val.input, plain.validation_batches()[0].input)
    with pytest.raises(Exception, match="in-plane"):
        SRPairSampler(pairs, [], (4, 4, 4), lr_patch=2, slices=True)


def test_context_slices_give_the_lr_neighbours_and_the_centre_hr_slice():
    pair = _pair(3, shape=(8, 8, 7))
    sampler = SRPairSampler([pair], [], (4, 4, 1), lr_patch=4, slices=True, context=2, augment=False)
    g = torch.Generator().manual_seed(0)
    params = sampler.sample_params(torch.Generator().manual_seed(0), [pair])
    batch = sampler.sample(1, g)
    assert batch.input.shape == (1, 5, 4, 4) and batch.target.shape == (1, 1, 16, 16)
    (x0, y0, z0) = params.corner
    np.testing.assert_array_equal(batch.input[0].numpy(), np.moveaxis(pair.lr[x0:x0 + 4, y0:y0 + 4, z0:z0 + 5], -1, 0))
    np.testing.assert_array_equal(batch.target[0, 0].numpy(), pair.hr[4 * x0:4 * x0 + 16, 4 * y0:4 * y0 + 16, z0 + 2])
    model = tiny_model(context_slices=2)
    pred = SR3Predictor(model, amp=False)
    lr = np.random.default_rng(0).random((4, 4, 3)).astype(np.float32)
    res = pred.predict(lr, steps=2, samples=1)  # 3 slices, 2 neighbours each side: the ends replicate
    assert res.mean.shape == (16, 16, 3) and np.isfinite(res.mean).all()


# ------------------------------------------------------------------ training: EMA, cosine state, exact resume
def _trainer(tmp_path, cfg):
    pairs = [_pair(0), _pair(1), _pair(2)]
    return workflow.make_trainer(pairs, tmp_path, cfg)


def test_resume_is_exact_with_ema_and_cosine_state(tmp_path):
    full = _trainer(tmp_path / "full", tiny_config(6))
    full.fit()
    half = _trainer(tmp_path / "half", tiny_config(6))
    half.add_callback(lambda e: half.request_stop() if getattr(e, "step", 0) == 3 else None)
    assert half.fit().steps_done == 3
    cfg = tiny_config(6)
    resumed = _trainer(tmp_path / "half", cfg)
    resumed.fit(resume=True)
    a, b = load_checkpoint(tmp_path / "full" / "last.pt"), load_checkpoint(tmp_path / "half" / "last.pt")
    assert a["ema_state"] and a["scheduler_state"]["last_epoch"] == 6
    for key in ("model_state", "ema_state"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), (key, name)
    assert a["scheduler_state"] == b["scheduler_state"]
    # the EMA differs from the raw weights, and prediction loads the averaged ones
    name = next(k for k in a["model_state"] if k.endswith("weight"))
    assert not torch.equal(a["model_state"][name], a["ema_state"]["module." + name])
    pred = SR3Predictor.from_checkpoint(tmp_path / "full" / "last.pt")
    assert torch.equal(pred.model.state_dict()[name], a["ema_state"]["module." + name])


def test_diffusion_weight_is_live_and_logged(tmp_path):
    trainer = _trainer(None, tiny_config(2))
    events = []
    trainer.add_callback(events.append)
    trainer.loss_weights.set("ssim", 0.0)
    trainer.fit()
    steps = [e for e in events if type(e).__name__ == "StepEnd"]
    assert set(steps[-1].terms) == {"diffusion", "multiscale"}
    sr_default = get_task("sr").unavailable_terms(get_task("sr").default_config())
    assert get_task("sr").unavailable_terms(tiny_config()) == {k: sr_default[k] for k in ("perceptual", "projection")}
    assert "diffusion" in get_task("sr").unavailable_terms(get_task("sr").default_config())


# ------------------------------------------------------------------ command line
@pytest.fixture(scope="module")
def inplane_pairs(tmp_path_factory):
    d = tmp_path_factory.mktemp("soil_inplane")
    assert run("sr", "simulate", d, "--kind", "soil", "--scale", "4", "--inplane", "--n", "3", "--size", "32",
               "--seed", "2") == 0
    return d


def test_cli_train_and_predict_with_samples(inplane_pairs, tmp_path, capsys):
    lr = nib.load(inplane_pairs / "lr_000.nii.gz")
    assert lr.shape == (8, 8, 32)
    cfg_path = tmp_path / "sr3.yaml"
    save_config(tiny_config(2), cfg_path)
    run_dir = tmp_path / "run"
    assert run("sr", "train", inplane_pairs, "--out", run_dir, "--model", "sr3", "--config", cfg_path) == 0
    small = tmp_path / "lr_small.nii.gz"
    nib.save(nib.Nifti1Image(lr.get_fdata(dtype=np.float32)[:, :, :3], lr.affine), small)
    out = tmp_path / "SR.nii.gz"
    assert run("sr", "predict", small, "-o", out, "--model", "sr3", "--checkpoint", run_dir / "last.pt",
               "--samples", "3", "--steps", "3", "--seed", "5") == 0
    assert f"within mean +- {interval_factor(3):.2f} std in 95% of voxels" in capsys.readouterr().out
    mean, std = nib.load(out), nib.load(tmp_path / "SR_std.nii.gz")
    assert mean.shape == std.shape == (32, 32, 3)
    assert np.allclose(mean.affine, nib.load(inplane_pairs / "hr_000.nii.gz").affine)
    assert float(std.get_fdata().min()) >= 0 and float(std.get_fdata().mean()) > 0
    again = tmp_path / "SR2.nii.gz"  # the same seed gives the same result
    assert run("sr", "predict", small, "-o", again, "--checkpoint", run_dir / "last.pt", "--samples", "3",
               "--steps", "3", "--seed", "5") == 0
    assert np.array_equal(nib.load(again).get_fdata(), mean.get_fdata())
    one = tmp_path / "one.nii.gz"
    assert run("sr", "predict", small, "-o", one, "--checkpoint", run_dir / "last.pt", "--samples", "1",
               "--steps", "2") == 0
    assert not (tmp_path / "one_std.nii.gz").exists()


def test_cli_inplane_degrade_and_bicubic(inplane_pairs, tmp_path):
    lr = tmp_path / "lr8.nii.gz"
    assert run("sr", "degrade", inplane_pairs / "hr_000.nii.gz", "-o", lr, "--scale", "8", "--inplane") == 0
    assert nib.load(lr).shape == (4, 4, 32)
    out = tmp_path / "bicubic.nii.gz"
    assert run("sr", "baseline", "tricubic", lr, "-o", out, "--scale", "8", "--inplane") == 0
    assert nib.load(out).shape == (32, 32, 32)


def test_cli_bad_sr3_input_exits_2_and_writes_nothing(inplane_pairs, tmp_path, capsys):
    lr = inplane_pairs / "lr_000.nii.gz"
    out = tmp_path / "x.nii.gz"
    assert run("sr", "predict", lr, "-o", out, "--samples", "2") == 2  # samples without sr3
    assert "--model sr3" in capsys.readouterr().err
    assert run("sr", "predict", lr, "-o", out, "--model", "sr3", "--samples", "0") == 2
    assert "at least 1" in capsys.readouterr().err
    assert run("sr", "predict", lr, "-o", out, "--model", "sr3", "--scale", "4") == 2
    assert "x8" in capsys.readouterr().err
    cfg = get_task("sr").default_config(model="sr3")
    cfg.options = {**cfg.options, "inplane": False}
    bad = tmp_path / "bad.yaml"
    save_config(cfg, bad)
    assert run("sr", "train", inplane_pairs, "--out", tmp_path / "r", "--config", bad) == 2
    assert "inplane" in capsys.readouterr().err
    assert run("sr", "train", inplane_pairs, "--out", tmp_path / "r", "--model", "rrdb_sr", "--config", bad) == 2
    assert "--model" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "x_std.nii.gz").exists() and not (tmp_path / "r").exists()


def test_config_command_prints_the_sr3_defaults(capsys):
    assert run("config", "--task", "sr", "--model", "sr3") == 0
    text = capsys.readouterr().out
    assert "name: sr3" in text and "ema_decay: 0.998" in text and "schedule: cosine" in text


def test_interval_factor_covers_95_percent_of_a_calibrated_models_truths():
    """Truth and K samples drawn from one distribution per voxel: mean +- c std holds the truth 95% of the time."""
    rng = np.random.default_rng(0)
    n = 200_000
    centre, spread = rng.normal(0, 5, n), rng.uniform(0.1, 3.0, n)
    for k in (2, 4, 16):
        draws = centre + spread * rng.standard_normal((k + 1, n))  # k samples and the truth
        mean, std = draws[:k].mean(0), draws[:k].std(0, ddof=1)
        err = np.abs(mean - draws[k])
        assert abs(np.mean(err <= interval_factor(k) * std) - 0.95) < 0.005
        assert np.mean(err <= 2 * std) < 0.94  # two std alone undercovers, most at small K
    assert interval_factor(4) == pytest.approx(3.558, abs=1e-3)
    with pytest.raises(InputError):
        interval_factor(1)
