"""Where does the DWI network's gain over its own prior stop? Learning curves and input ablations.

    python benchmarks/dwi_learning.py                       # multishell-65 SNR 10, seed 0, all variants
    python benchmarks/dwi_learning.py --variants default wide --steps 400 1600
    python benchmarks/dwi_learning.py --quick               # 32x32x16 phantom, 40 steps: a smoke run

The phantom's q-space priors are prepared once; every variant then trains a fresh network
through the real trainer (default configuration unless the variant changes it) and is scored
at several steps on **held-out data**: 16 fixed diffusion volumes, spread over the shells,
predicted over the whole field of view (the network never sees the volume it predicts, so every
voxel of it is held out from its own prediction), inside the brain mask:

- ``held-out MSE``: against the noisy volume, the J-invariant loss the network minimises
  (Batson & Royer 2019: = MSE to E[noisy] + noise variance; not so for the ``sees-target`` diagnostics,
  whose prediction may follow the noisy voxel);
- ``MSE to E[noisy]``: against the Rician mean of the clean signal (Gudbjartsson & Patz 1995), the
  best a J-invariant predictor can reach: the network's error with the noise taken out;
- ``MSE to clean``: against the phantom's clean signal (contains the Rician bias, which the
  post-processing's inversion removes later, for the network and the prior alike);
- the same two numbers for the split MP-PCA prior (the network's first input, which it corrects);
- ``mean df/dy``: how much the prediction follows the noisy voxel it predicts (0 for a J-invariant
  network, 1 for the noisy volume itself), by one perturbed prediction.

Units: the input's, squared (the issue's 3795 vs 3759). A network that adds nothing matches the prior.

Variants: ``default``; ``wide`` (base_filters 48); ``patch48`` (48^3 patches); ``no-volumes`` (the
other volumes zeroed: priors only); ``no-reg-sh`` (the regression and spherical-harmonic priors zeroed);
``mse`` (no edge term); ``lr3e-3`` (peak learning rate 3e-3). Channels are zeroed in the sampler and at
evaluation, so the architecture stays the same.

Diagnostics of the training signal (not trainable on real data: they read the phantom's truth): the
network is trained against ``E[noisy] + a (noisy - E[noisy])``, the J-invariant target with its noise
scaled by ``a``: ``target-noise-0.5`` (a = 0.5, what averaging four repeats of each volume would give)
and ``oracle-target`` (a = 0, the Rician mean itself). Same inputs (noisy), same architecture and steps;
if these beat the prior by far more than the default, the noise in the self-supervised target, not the
inputs or the capacity, is what holds the network back.

What the J-invariant network cannot use is the noisy volume it predicts. ``sees-target`` gives it that volume
as one more input channel and trains it by Stein's unbiased risk estimate instead (Stein 1981; for training a
denoiser without clean data: Soltanayev & Chun 2018, "Training deep learning based denoisers without ground
truth data", NeurIPS), the objective that lets a network weigh the target's own noisy voxels in the way the
blend's SURE weighs the noisy volume: ``mean((f - y)^2 - v) + 2 mean(v df/dy)``, the divergence by one
perturbed forward pass (Monte-Carlo SURE, Ramani et al. 2008; float32, so ``train.amp`` is off) and ``v`` the
Rician variance about the magnitude mean per voxel, from the split prior (an estimate of that mean) and sigma.
``sees-target-sigma`` uses the Gaussian ``v = sigma^2`` instead: magnitude noise has a smaller variance
(0.43 sigma^2 in air), and SURE's bias ``(var - sigma^2)(1 - 2 df/dy)`` then rewards a network that
anti-correlates its output with the noisy voxel. ``denoised-volumes`` keeps the J-invariant loss but feeds
the other volumes MP-PCA-denoised instead of noisy: for target ``j`` in prior fold ``k``, the volumes outside
``k`` as MP-PCA denoises them without fold ``k`` (the split prior's own intermediate), the other volumes of
``k`` as their split prior (in the brain dilated by 2 voxels, 0 beyond); nothing depends on the noise of
``j`` (``data.volume_input: denoised``, :class:`workbench.data.dwi.DWISubject`, the default since stop 39;
``noisy-volumes`` is the earlier default, the noisy other volumes). All three read only what a real scan has (sigma here is the phantom's, which the background estimate
matches on this phantom).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from workbench.config import Config
from workbench.data.dwi import DWIPatchSampler, prepare_subject
from workbench.data.phantoms import simulate_dwi
from workbench.inference import predict_tiled
from workbench.models import build_model
from workbench.rician import invert_rician_mean, rician_mean
from workbench.tasks.dwi.objective import jinvariant_step
from workbench.training.steps import StepOutput
from workbench.training.events import StepEnd
from workbench.training.schedules import cpu_has_native_bf16, cpu_model_name
from workbench.training.trainer import Trainer

VARIANTS = ("default", "wide", "patch48", "no-volumes", "no-reg-sh", "mse", "lr3e-3")
#: diagnostics that read the truth: the scale of the target's noise (run only when asked for)
TARGET_NOISE = {"target-noise-0.5": 0.5, "oracle-target": 0.0}
#: the network also sees the noisy volume it predicts, trained by SURE with this noise variance
SEES_TARGET = {"sees-target": "rician", "sees-target-sigma": "sigma"}
DIAGNOSTICS = tuple(TARGET_NOISE) + tuple(SEES_TARGET) + ("denoised-volumes", "noisy-volumes")


def configure(name: str, steps: int) -> tuple[Config, str]:
    """The variant's config and the input channels it zeroes ("", "volumes" or "reg-sh")."""
    cfg = Config()
    cfg.train.steps = steps
    cfg.train.val_every = max(steps, 1)
    zero = ""
    if name == "wide":
        cfg.model.base_filters = 48
    elif name == "patch48":
        cfg.data.patch_size = 48
    elif name == "no-volumes":
        zero = "volumes"
    elif name == "no-reg-sh":
        zero = "reg-sh"
    elif name == "mse":
        cfg.loss.weights = {"mse": 1.0}
    elif name == "lr3e-3":
        cfg.train.lr = 3e-3
    elif name == "denoised-volumes":
        cfg.data.volume_input = "denoised"
    elif name == "noisy-volumes":
        cfg.data.volume_input = "noisy"
    elif name in SEES_TARGET:
        cfg.train.amp = False  # the finite-difference divergence needs float32
    elif name != "default" and name not in TARGET_NOISE:
        raise SystemExit(f"unknown variant {name!r}; known: {', '.join(VARIANTS + DIAGNOSTICS)}")
    return cfg, zero


def zero_channels(image: torch.Tensor, zero: str, n_priors: int) -> torch.Tensor:
    """Zero the ablated channels of a (B, C, ...) or (C, ...) network input (a copy)."""
    if not zero:
        return image
    image = image.clone()
    sel = slice(n_priors, None) if zero == "volumes" else slice(1, n_priors)
    image[(slice(None),) * (image.dim() - 4) + (sel,)] = 0
    return image


class ZeroingSampler(DWIPatchSampler):
    """The real patch sampler with some input channels zeroed, and (diagnostics) its targets' noise scaled."""

    zero: str = ""
    #: (E[noisy] (N, X, Y, Z) in the subject's units, a): targets become E[noisy] + a (noisy - E[noisy])
    target_noise: tuple | None = None

    def _target(self, subject, j, region):
        noisy = super()._target(subject, j, region)
        if self.target_noise is None:
            return noisy
        mean, a = self.target_noise
        expected = torch.from_numpy(np.ascontiguousarray(mean[(slice(j, j + 1),) + region]))
        return expected + a * (noisy - expected)

    def _input(self, subject, j, region):
        return zero_channels(super()._input(subject, j, region), self.zero, subject.n_priors)


class SeesTargetSampler(DWIPatchSampler):
    """Patches whose input ends with the noisy target volume and, for the loss only, its noise std
    (a std, not a variance: the intensity augmentation then scales it with the data)."""

    #: (N, X, Y, Z) float32 noise std per voxel, the subject's units
    noise_std: torch.Tensor | None = None

    def _input(self, subject, j, region):
        return torch.cat([subject.network_input(j, region), self._target(subject, j, region),
                          self.noise_std[(slice(j, j + 1),) + region]])


def sure_step(model, batch, ctx):
    """Monte-Carlo SURE of the network's prediction of the noisy target it also sees (the last input
    channel but one; the last is the noise std, ``v`` its square): ``mean((f - y)^2 - v + 2 v b (f(y + eps b) - f(y)) / eps)``
    over the loss mask, ``eps`` 1% of the typical noise std."""
    var, image = batch.input[:, -1:] ** 2, batch.input[:, :-1]
    pred = model(image, batch.cond).float()
    m = batch.mask
    n = m.sum().clamp_min(1.0)
    if not ctx.training:
        return StepOutput((((pred - batch.target) ** 2) * m).sum() / n, {})
    probe = torch.randn(batch.target.shape, generator=ctx.generator)
    eps = 0.01 * float(var[m.expand_as(var) > 0].mean().sqrt())
    moved = image.clone()
    moved[:, -1:] += eps * probe
    divergence = ((model(moved, batch.cond).float() - pred) * probe * var * m).sum() / eps
    loss = ((((pred - batch.target) ** 2) - var) * m).sum() / n + 2.0 * divergence / n
    return StepOutput(loss, {"sure": float(loss.detach()), "divergence": float(divergence.detach() / n)})


def noise_variance(subject, sigma: float, kind: str) -> torch.Tensor:
    """Per-voxel noise variance about the magnitude mean: Rician from the split prior and ``sigma``
    (``nu^2 + 2 sigma^2 - m^2`` with ``nu`` the inverted mean, between Rayleigh's 0.43 sigma^2 and
    sigma^2), or ``sigma^2`` everywhere."""
    prior = subject.priors[0].float().numpy()
    if kind == "sigma":
        return torch.full(prior.shape, float(sigma) ** 2)
    nu = invert_rician_mean(prior, sigma)
    var = np.clip(nu ** 2 + 2 * sigma ** 2 - prior ** 2, (2 - np.pi / 2) * sigma ** 2, sigma ** 2)
    return torch.from_numpy(var.astype(np.float32))


def errors(pred, j, subject, clean, target) -> dict[str, float]:
    brain = subject.mask.numpy()
    sc2 = subject.scale ** 2
    out = {}
    for key, ref in (("heldout", subject.volumes[j].numpy()), ("target", target[j]), ("clean", clean[j])):
        out[key] = float(np.mean((pred - ref)[brain].astype(np.float64) ** 2)) * sc2
    return out


def mean_errors(items: list[dict]) -> dict[str, float]:
    return {k: float(np.mean([d[k] for d in items])) for k in items[0]}


def score(model, subject, clean, target, volumes, network_input, sees_target=False) -> dict[str, float]:
    """Held-out MSE (vs noisy), MSE to E[noisy] and to clean of the network on ``volumes``, input units squared.

    ``network_input(j)`` is the whole-field input of volume ``j`` (the variant's sampler builds it)."""
    was_training = model.training
    model.eval()
    items = []
    with torch.no_grad():
        for j in volumes:
            image = network_input(j)
            pred = predict_tiled(model, image, j, tile=64, overlap=8, device=torch.device("cpu"),
                                 amp=False)[0].numpy()
            items.append(errors(pred, j, subject, clean, target))
            if sees_target:  # how much the prediction follows the noisy voxel: mean df/dy in the brain
                probe = torch.randn(image.shape[1:], generator=torch.Generator().manual_seed(j))
                eps = 1e-3
                image[-1] += eps * probe
                moved = predict_tiled(model, image, j, tile=64, overlap=8, device=torch.device("cpu"),
                                      amp=False)[0].numpy()
                items[-1]["dfdy"] = float(np.mean(((moved - pred) * probe.numpy() / eps)[subject.mask.numpy()]))
    model.train(was_training)
    return mean_errors(items)


def prior_score(subject, clean, target, volumes) -> dict[str, float]:
    p = subject.priors[0].numpy()
    return mean_errors([errors(p[j], j, subject, clean, target) for j in volumes])


def run_variant(name, steps, eval_at, subject, clean, target, volumes, sigma) -> list[dict]:
    cfg, zero = configure(name, steps)
    sees = name in SEES_TARGET
    if sees:
        sampler = SeesTargetSampler([subject], patch_size=cfg.data.patch_size, augment=cfg.data.augment)
        sampler.noise_std = noise_variance(subject, sigma, SEES_TARGET[name]).sqrt()
    else:
        sampler = ZeroingSampler([subject], patch_size=cfg.data.patch_size, augment=cfg.data.augment)
        sampler.zero = zero
    if name in TARGET_NOISE:
        sampler.target_noise = (target, TARGET_NOISE[name])
    torch.manual_seed(cfg.train.seed)
    in_channels = subject.in_channels + int(sees)
    model = build_model(cfg.model, in_channels=in_channels, out_channels=1,
                        num_conditions=subject.n_volumes, residual_channel=0)
    whole = (slice(None),) * 3

    def network_input(j):  # without the sees-target sampler's trailing noise-std channel
        return sampler._input(subject, j, whole)[:in_channels]

    rows: list[dict] = []
    t0 = time.perf_counter()
    trainer = None

    def on_event(event):
        if isinstance(event, StepEnd) and event.step in eval_at:
            seconds = time.perf_counter() - t0
            rows.append({"variant": name, "steps": steps, "step": event.step, "train_s": seconds,
                         **score(trainer.raw_model, subject, clean, target, volumes, network_input, sees)})
            r = rows[-1]
            print(f"  {name} {steps} step {event.step}: held-out {r['heldout']:.1f}, to E[noisy] "
                  f"{r['target']:.1f}, to clean {r['clean']:.1f} ({seconds:.0f} s)", flush=True)

    trainer = Trainer(model, sampler, cfg, callbacks=(on_event,), step=sure_step if sees else jinvariant_step,
                      model_meta={"in_channels": in_channels})
    trainer.fit()
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS + DIAGNOSTICS)
    parser.add_argument("--steps", nargs="+", type=int, default=[400],
                        help="training lengths (each a separate run with its own schedule); "
                             "'default' also runs 1600")
    parser.add_argument("--scheme", default="multishell", choices=["multishell", "dti"])
    parser.add_argument("--snr", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    shape = (32, 32, 16) if args.quick else (64, 64, 32)
    steps_list = [40] if args.quick else args.steps
    phantom = simulate_dwi(shape=shape, scheme=args.scheme, snr=args.snr, seed=args.seed)
    subject_data = Config().data
    t0 = time.perf_counter()
    subject = prepare_subject(phantom.noisy, phantom.bvals, phantom.bvecs, subject_data, mask=phantom.mask)
    print(f"# {args.scheme} SNR {args.snr:g} seed {args.seed}, {shape} x {subject.n_volumes}; priors "
          f"{time.perf_counter() - t0:.0f} s; CPU {cpu_model_name()} (native bf16: {cpu_has_native_bf16()}), "
          f"{args.threads} threads, torch {torch.__version__}", flush=True)
    clean = np.moveaxis(phantom.clean, -1, 0) / np.float32(subject.scale)
    target = rician_mean(clean, phantom.sigma / subject.scale).astype(np.float32)
    dw = np.flatnonzero(phantom.bvals > 50)
    volumes = [int(v) for v in dw[np.linspace(0, len(dw) - 1, 16).round().astype(int)]]
    prior = prior_score(subject, clean, target, volumes)
    print(f"  split MP-PCA prior: held-out {prior['heldout']:.1f}, to E[noisy] {prior['target']:.1f}, "
          f"to clean {prior['clean']:.1f}", flush=True)
    rows = []
    for name in args.variants:
        runs = sorted(set(steps_list) | ({4 * max(steps_list)} if name == "default" and not args.quick else set()))
        data = configure(name, 1)[0].data
        own = subject if data.denoised_volume_input == subject_data.denoised_volume_input else prepare_subject(phantom.noisy, phantom.bvals, phantom.bvecs, data,
                                                                  mask=phantom.mask, scale=subject.scale)
        for steps in runs:
            eval_at = {s for s in (steps // 4, steps // 2, steps) if s > 0}
            rows += run_variant(name, steps, eval_at, own, clean, target, volumes, phantom.sigma / subject.scale)
    print(f"\nsplit MP-PCA prior (the network's input): held-out MSE {prior['heldout']:.1f}, "
          f"MSE to E[noisy] {prior['target']:.1f}, MSE to clean {prior['clean']:.1f}\n")
    print("| variant | run steps | at step | held-out MSE | MSE to E[noisy] | vs prior | MSE to clean | "
          "mean df/dy | train s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['steps']} | {r['step']} | {r['heldout']:.1f} | {r['target']:.1f} | "
              f"{100 * (r['target'] / prior['target'] - 1):+.1f}% | {r['clean']:.1f} | "
              f"{r.get('dfdy', 0.0):.3f} | {r['train_s']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
