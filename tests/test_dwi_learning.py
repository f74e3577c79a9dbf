"""benchmarks/dwi_learning.py's SURE diagnostic: its objective is Stein's unbiased risk estimate, and its
noise variance is the Rician one (issue 15: the network that also sees the noisy volume it predicts)."""

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from workbench.training.sampling import Batch
from workbench.training.steps import StepContext

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_dwi_learning", ROOT / "benchmarks" / "dwi_learning.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Mix(torch.nn.Module):
    """``k`` noisy target + ``(1 - k)`` prior: a denoiser with divergence ``k`` per voxel."""

    def __init__(self, k: float) -> None:
        super().__init__()
        self.k = k

    def forward(self, x, cond):
        return self.k * x[:, -1:] + (1.0 - self.k) * x[:, :1]


@pytest.mark.parametrize("k", [-0.3, 0.0, 0.4, 1.0])
def test_sure_step_estimates_the_error_to_the_clean_signal(bench, k):
    """Gaussian noise: the training loss is unbiased for the true MSE, whichever way the model leans on
    the noisy voxel (a wrong divergence sign or scale is off by ~2 k sigma^2)."""
    g = torch.Generator().manual_seed(0)
    shape = (4, 1, 33, 34, 35)
    clean = torch.rand(shape, generator=g)
    sigma = 0.2
    noisy = clean + sigma * torch.randn(shape, generator=g)
    prior = clean + 0.1 * torch.randn(shape, generator=g)  # independent of the target's noise
    noise_std = torch.full(shape, sigma)
    batch = Batch(input=torch.cat([prior, noisy, noise_std], 1), target=noisy, cond=torch.zeros(4, dtype=torch.long),
                  mask=torch.ones(shape))
    ctx = StepContext(criterion=None, generator=torch.Generator().manual_seed(1), training=True, step=0)
    model = Mix(k)
    out = bench.sure_step(model, batch, ctx)
    true = float(((model(batch.input[:, :-1], None) - clean) ** 2).mean())
    assert out.terms["divergence"] == pytest.approx(k * sigma ** 2, abs=2e-4)
    assert float(out.loss) == pytest.approx(true, abs=0.02 * sigma ** 2 + 0.01 * true)
    val = bench.sure_step(model, batch, StepContext(None, torch.Generator(), False, 0))
    assert float(val.loss) == pytest.approx(float(((model(batch.input[:, :-1], None) - noisy) ** 2).mean()))


def test_noise_variance_is_rician(bench):
    """Between Rayleigh's (2 - pi/2) sigma^2 in air and sigma^2 where the signal is far above the noise."""
    sigma = 0.05
    from workbench.rician import rician_mean

    signal = np.array([0.0, 0.05, 0.1, 1.0], np.float32)
    prior = torch.from_numpy(rician_mean(signal, sigma).astype(np.float16)).reshape(1, 1, 4, 1, 1)
    subject = SimpleNamespace(priors=prior)
    var = bench.noise_variance(subject, sigma, "rician").reshape(-1).numpy() / sigma ** 2
    assert var[0] == pytest.approx(2 - np.pi / 2, rel=0.05)
    assert np.all(np.diff(var) > 0) and var[-1] == pytest.approx(1.0, abs=0.01)
    assert np.all(bench.noise_variance(subject, sigma, "sigma").numpy() == pytest.approx(sigma ** 2))
