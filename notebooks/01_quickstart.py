# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 01 · Quickstart: simulate, train, denoise, compare
#
# In this notebook you will
#
# 1. simulate a diffusion-weighted MRI (DWI) brain phantom for which the clean signal is known,
# 2. browse it slice by slice,
# 3. train the self-supervised denoiser on the noisy data alone (no clean data needed) and watch the loss,
# 4. denoise the series and compare noisy / denoised / clean with metrics.
#
# **How long?** By default the notebook uses the full-size phantom (64×64×32, two b-value shells) and
# the default configuration: about 10 minutes on a 2-core CPU with native bfloat16 (AVX512-BF16/AMX; under a
# minute for the split MP-PCA prior, 2000 training steps at about 0.25 s each, a minute of inference and MP-PCA
# blend), about twice that on a CPU without it, much faster on a GPU. With the environment variable `CI` set (e.g. `CI=1 jupyter lab`) it runs a tiny
# version (24×24×12 phantom, 20 steps, small model) in under a minute: good for a first look, not for
# judging quality. For something in between, add `cfg.train.steps = 200` after `tutorial_setup` below.

# %%
import numpy as np
from IPython.display import display

from workbench import api
from workbench.baselines import estimate_background_sigma
from workbench.data.nifti import DWISeries
from workbench.data.phantoms import simulate_dwi
from workbench.metrics import evaluate_dwi, rmse
from workbench.notebook_ui import LossPlot, SliceViewer, small_mode
from workbench.tasks.dwi.notebook import tutorial_setup

SMALL = small_mode()  # True when the environment variable CI is set
phantom_args, cfg = tutorial_setup(SMALL)
print("small CI mode:", SMALL)
print("phantom:", phantom_args)
print(f"model {cfg.model.name} (base_filters {cfg.model.base_filters}), {cfg.train.steps} steps, "
      f"patch {cfg.data.patch_size}, batch {cfg.data.batch_size}, AMP {cfg.train.amp}")

# %% [markdown]
# ## 1. A phantom with ground truth
#
# `simulate_dwi` returns the noisy series, the clean signal, a brain mask and the gradient table
# (b-values and directions). Arrays are (X, Y, Z, N): N diffusion volumes. The noise is Rician,
# as in real magnitude images; `snr` is the white-matter b=0 signal over the noise sigma.

# %%
ph = simulate_dwi(**phantom_args)
print(ph)
print("noisy", ph.noisy.shape, ph.noisy.dtype, "| clean", ph.clean.shape, "| mask", ph.mask.shape)
print("b-values:", sorted({int(b) for b in ph.bvals}))

# %%
# NBVAL_CHECK_OUTPUT
print("(X, Y, Z, N) series:", ph.noisy.shape == (*phantom_args["shape"], len(ph.bvals)))
print("clean has the same shape:", ph.clean.shape == ph.noisy.shape)
print("mask is (X, Y, Z):", ph.mask.shape == ph.noisy.shape[:3])

# %% [markdown]
# Browse the data. `view` switches the slicing axis, `slice` moves through the volume and `volume`
# picks the diffusion volume (the first ones are b=0, bright; diffusion-weighted volumes are darker
# and noisier). The colour range is fixed by the clean volume so you can compare the panels fairly.

# %%
viewer = SliceViewer({"noisy": ph.noisy, "clean": ph.clean}, reference="clean", mask=ph.mask,
                     title="noisy input vs the truth")
viewer

# %%
# the same sliders, moved from code (what you would do with the mouse)
viewer.volume.value = int(np.flatnonzero(ph.bvals > 50)[0])  # the first diffusion-weighted volume
viewer.index.value = ph.shape[2] // 2

# %% [markdown]
# ## 2. Train the denoiser
#
# The model never sees the clean data. For each volume *j* it predicts *j* from all the *other* volumes
# (plus three predictions of *j* that never look at it: MP-PCA of the other volumes regressed onto *j*, a
# regression and a spherical-harmonic fit), so the noise in *j* cannot be copied and the loss against the
# noisy *j* trains a denoiser (Noise2Self). Preparing those predictions is the pause before the first step. `make_trainer` prepares the data and the model; `fit()`
# runs the loop and calls `LossPlot` after every step, so the plot below updates while it trains.
# AMP (mixed precision) is on: bfloat16 on CPU, float16/bfloat16 on a GPU (`cfg.train.amp = "auto"`
# would switch it off on CPUs that only emulate bfloat16).
#
# `out_dir` (here `tutorial_output/quickstart`) receives the `best.pt` / `last.pt` checkpoints,
# `metrics.csv` and TensorBoard logs. Notebooks 03 and 04 reuse this model instead of training again.

# %%
series = DWISeries(ph.noisy, ph.affine, bvals=ph.bvals, bvecs=ph.bvecs)
plot = LossPlot(min_interval=1.0)
display(plot)
trainer = api.make_trainer([series], "tutorial_output/quickstart", cfg, masks=[ph.mask], callbacks=[plot])
result = trainer.fit()  # blocks until done; 02_live_loss_weights runs it in the background instead

# %%
# NBVAL_CHECK_OUTPUT
print("reason:", result.reason, "| all steps done:", result.steps_done == cfg.train.steps)
print("loss terms logged:", sorted(plot.history["terms"]))
print("validated every val_every steps:",
      [h["step"] for h in result.history] == list(range(cfg.train.val_every, cfg.train.steps + 1, cfg.train.val_every)))

# %% [markdown]
# ## 3. Denoise and compare
#
# `api.snapshot_denoiser` wraps the trained model for inference (`Denoiser.from_checkpoint(result.best_checkpoint)`
# would load it from disk instead). `denoise` predicts every volume from the others, tile by tile.
# Given the noise level `sigma` (measured in the air around the head), it then does what
# `workbench denoise` does: it blends each prediction with full-data MP-PCA and the noisy volume, the
# weights per volume chosen by Stein's unbiased risk estimate (SURE: no clean data needed), and removes
# the Rician bias of magnitude data, without letting any diffusion-weighted voxel decay faster than free
# water can (the free-water floor). It also returns `heldout_mse` and `est_rmse` (SURE of the blend carried
# through the Rician inversion), quality estimates that need no reference (see notebook 04), `est_per_shell`
# (the same per shell, `flagged` where much of a shell's signal is near the noise floor and the estimate
# may be low), and the blend weights.

# %%
sigma = estimate_background_sigma(ph.noisy, ph.mask)  # None when there is too little air in the image
den = api.snapshot_denoiser(trainer)
out = den.denoise(ph.noisy, ph.bvals, ph.bvecs, mask=ph.mask, sigma=sigma)
print("denoised", out.denoised.shape)
print(f"noise sigma {sigma:.1f} (true {ph.sigma:.1f}), held-out MSE {out.heldout_mse:.1f}, "
      f"estimated RMSE to clean {out.est_rmse:.1f}")
if out.est_per_shell:
    from workbench.error_estimate import describe

    print("estimated RMSE to clean per shell:", describe(out.est_per_shell))
if out.blend_weights is not None:
    print("mean blend weights (network, MP-PCA, noisy):", out.blend_weights.mean(axis=0).round(2))

# %%
metrics = {"noisy": evaluate_dwi(ph.noisy, ph.clean, ph.bvals, ph.bvecs, ph.mask),
           "denoised": evaluate_dwi(out.denoised, ph.clean, ph.bvals, ph.bvecs, ph.mask)}
for name, m in metrics.items():
    print(f"{name:9s} PSNR {m['psnr_dwi']:6.2f} dB  SSIM {m['ssim_dwi']:.3f}  RMSE {m['rmse_dwi']:7.2f}  "
          f"FA error {m['fa_rmse']:.3f}  edge sharpness ratio {m['edge_sharpness_ratio']:.2f}")

# %%
# NBVAL_CHECK_OUTPUT
print("metric keys:", sorted(metrics["denoised"]))
print("denoised RMSE < noisy RMSE:", rmse(out.denoised, ph.clean, ph.mask) < rmse(ph.noisy, ph.clean, ph.mask))

# %% [markdown]
# Slice by slice: each panel title shows that slice's PSNR and RMSE against the clean signal (inside
# the brain). Move through volumes and slices: where does denoising help most, and does any fine
# anatomy (the thin dark CSF layer at the edge of the brain) look smoothed away?

# %%
compare = SliceViewer({"noisy": ph.noisy, "denoised": out.denoised, "clean": ph.clean},
                      reference="clean", mask=ph.mask, title="noisy / denoised / clean")
compare.volume.value = int(np.flatnonzero(ph.bvals > 50)[0])
compare

# %%
# NBVAL_CHECK_OUTPUT
m = compare.slice_metrics("denoised"), compare.slice_metrics("noisy")
print("this slice: denoised PSNR > noisy PSNR:", m[0]["psnr"] > m[1]["psnr"])

# %% [markdown]
# ## What to try next
#
# - Lower `snr` in `simulate_dwi` (e.g. 5) and see how much more the denoiser helps.
# - Train longer (`cfg.train.steps`) or a bigger model (`cfg.model.base_filters`).
# - **02_live_loss_weights**: change the loss while it trains and watch sharpness and PSNR respond.
# - **03_edges_attention**: where the model sees edges and where it looks.
# - **04_classics**: compare with MP-PCA and Patch2Self, and estimate quality without a reference.
