"""SR3 training objective and DDIM sampling, on MONAI's noise schedulers.

Intensities: the task normalises every volume from its LR percentiles to about [0, 1]
(:class:`workbench.tasks.sr.data.Intensity`); the diffusion runs in ``x = (v - 0.5) * 1.2``.
At 8x the LR is so averaged that the HR spans well beyond [0, 1] in those units (about
-0.8 to 2.2 on simulated soil), so the samplers clip the clean estimate only at +-3, a
guard against divergence that never touches real data, rather than at the usual +-1.

Training (:func:`diffusion_step`): draw ``t`` uniformly and Gaussian noise from the
trainer's generator, noise the HR image with the forward process ``q(x_t | x_0)``
(Ho et al. 2020), and regress the network output on ``epsilon`` or ``v``
(Salimans & Ho 2022) with the mean squared error: the "diffusion" term, whose minimiser
is the posterior mean that sampling needs (an L1 regression gives a median and narrows
the spread of the samples, which the uncertainty map reads). Seed 004's auxiliary
terms (SSIM, multi-scale, perceptual) act on the clean image the network implies,
``x0_hat``; every weight is a live :class:`~workbench.loss_weights.LossWeights` entry.

Sampling (:func:`sample_slices`): DDIM (Song et al. 2021, "Denoising Diffusion Implicit
Models") with ``steps`` steps and ``eta = 0``, so a sample is a deterministic function
of its starting noise, drawn per slice from a seed (the same seed gives the same
image whatever the batching). ``K`` samples per slice give a mean and a per-pixel
standard deviation: the spread of plausible HR images given the LR image.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from workbench.tasks.base import check_cancel
from workbench.training.steps import StepContext, StepOutput, preview_slice

Tensor = torch.Tensor
SCALE, CENTRE, CLIP = 1.2, 0.5, 3.0


def to_model_space(v: Tensor) -> Tensor:
    """Normalised intensities (about [0, 1]) -> the diffusion's space (about [-0.6, 0.6])."""
    return (v - CENTRE) * SCALE


def from_model_space(x: Tensor) -> Tensor:
    return x / SCALE + CENTRE


def _bare(model: torch.nn.Module) -> torch.nn.Module:
    """The SR3 module inside DDP / torch.compile / AveragedModel wrappers (for its settings only)."""
    for attr in ("module", "_orig_mod"):
        while hasattr(model, attr) and not hasattr(model, "prediction"):
            model = getattr(model, attr)
    return model


def noise_scheduler(model: torch.nn.Module, sampler: str = "ddpm"):
    """MONAI's scheduler for the model's training schedule: ``"ddpm"`` (training, ``add_noise``) or ``"ddim"``."""
    from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

    net = _bare(model)
    cls = DDIMScheduler if sampler == "ddim" else DDPMScheduler
    return cls(num_train_timesteps=net.timesteps, schedule=net.noise_schedule, prediction_type=net.prediction,
               clip_sample=True, clip_sample_min=-CLIP, clip_sample_max=CLIP)


@functools.lru_cache(maxsize=8)
def _training_schedule(timesteps: int, schedule: str, prediction: str):
    """The training scheduler of a model's settings, built once (not at every step)."""
    from monai.networks.schedulers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=timesteps, schedule=schedule, prediction_type=prediction)


def alpha_bar(scheduler, t: Tensor) -> Tensor:
    """The cumulative signal fraction ``alpha_bar_t`` per item, shaped (B, 1, 1, 1)."""
    return scheduler.alphas_cumprod.to(t.device)[t].float().view(-1, 1, 1, 1)


def clean_estimate(prediction: str, x_t: Tensor, out: Tensor, abar: Tensor) -> Tensor:
    """``x0_hat`` from the network output (epsilon or v) and ``x_t``."""
    if prediction == "epsilon":
        return (x_t - (1 - abar).sqrt() * out) / abar.sqrt().clamp_min(1e-4)
    return abar.sqrt() * x_t - (1 - abar).sqrt() * out


def diffusion_step(model, batch, ctx: StepContext) -> StepOutput:
    """One SR3 training (or validation) step on 2D slices: ``batch.input`` LR, ``batch.target`` HR."""
    net = _bare(model)
    sched = _training_schedule(net.timesteps, net.noise_schedule, net.prediction)
    hr, lr = to_model_space(batch.target.float()), to_model_space(batch.input.float())
    b = hr.shape[0]
    t = torch.randint(0, net.timesteps, (b,), generator=ctx.generator).to(hr.device)
    noise = torch.randn(hr.shape, generator=ctx.generator).to(hr.device)
    abar = alpha_bar(sched, t)
    x_t = abar.sqrt() * hr + (1 - abar).sqrt() * noise  # q(x_t | x_0); equals sched.add_noise
    target = noise if net.prediction == "epsilon" else abar.sqrt() * noise - (1 - abar).sqrt() * hr
    out = model(x_t, t, lr).float()
    weights = ctx.criterion.weights.get()
    denoise = F.mse_loss(out, target)
    x0 = from_model_space(clean_estimate(net.prediction, x_t, out, abar))
    # auxiliary terms on the implied clean image, as 2D slices stored with depth 1
    aux, terms = ctx.criterion(x0[..., None], batch.target.float()[..., None], skip=("diffusion",))
    loss = weights.get("diffusion", 0.0) * denoise + aux
    terms = {"diffusion": float(denoise.detach()), **terms}
    images = {}
    if not ctx.training:
        centre = batch.input.shape[1] // 2  # the slice itself among its LR neighbours
        images = {"input": preview_slice(batch.input[:, centre:centre + 1]), "x_t": preview_slice(from_model_space(x_t)),
                  "prediction": preview_slice(x0), "target": preview_slice(batch.target)}
    return StepOutput(loss, terms, images)


@torch.no_grad()
def sample_slices(model: torch.nn.Module, lr: Tensor, *, steps: int = 20, samples: int = 1,
                  seeds: Optional[list[int]] = None, amp: bool = False, amp_dtype=torch.bfloat16,
                  progress: Optional[Callable[[], None]] = None, should_stop=None) -> Tensor:
    """DDIM samples of the HR slices of LR slices ``lr`` (B, 1, h, w), normalised intensities.

    Parameters
    ----------
    model : SR3UNet
        In eval mode, on the device of ``lr``; ``lr`` holds its 2n + 1 context slices as channels.
    steps : int
        DDIM steps (``eta = 0``).
    samples : int
        ``K``: independent samples per slice.
    seeds : list of int, optional
        One seed per slice (default 0, 1, ...); sample ``k`` of slice ``i`` starts from noise
        drawn with ``torch.Generator().manual_seed(seeds[i])`` as the ``k``-th draw.
    progress : callable, optional
        Called after every denoising step.
    should_stop : callable, optional
        Polled before every step; :class:`~workbench.tasks.base.Cancelled` when it returns True.

    Returns
    -------
    Tensor
        (K, B, 1, h * s, w * s) float32, normalised intensities.
    """
    net = _bare(model)
    if not 1 <= steps <= net.timesteps:
        raise ValueError(f"steps must be 1..{net.timesteps}, got {steps}")
    sched = noise_scheduler(net, "ddim")
    sched.set_timesteps(int(steps))
    b, _, h, w = lr.shape
    shape = (net.out_channels, h * net.scale[0], w * net.scale[1])
    seeds = list(range(b)) if seeds is None else [int(s) for s in seeds]
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    x = torch.stack([torch.stack([torch.randn(shape, generator=g) for g in gens]) for _ in range(samples)])
    x = x.reshape(samples * b, *shape).to(lr.device)
    lr_m = to_model_space(lr.float()).repeat(samples, 1, 1, 1)
    with torch.autocast(lr.device.type, dtype=amp_dtype, enabled=amp):
        cond = net.condition(lr_m)
    for t in sched.timesteps:
        check_cancel(should_stop)
        tt = torch.full((x.shape[0],), int(t), device=x.device, dtype=torch.long)
        with torch.autocast(lr.device.type, dtype=amp_dtype, enabled=amp):
            out = model(x, tt, lr_m, cond=cond)
        x, _ = sched.step(out.float(), int(t), x)
        if progress is not None:
            progress()
    return from_model_space(x).reshape(samples, b, *shape).float()
