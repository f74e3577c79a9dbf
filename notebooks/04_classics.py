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
# # 04 · Classic denoisers, residuals, and quality without a reference
#
# Two established DIPY methods run on the same phantom as our model:
#
# - **MP-PCA** (Veraart et al. 2016): local PCA that drops the components the Marchenko-Pastur law
#   attributes to noise.
# - **Patch2Self** (Fadnavis et al. 2020): predicts each volume from the others with a linear regression,
#   self-supervised like ours.
#
# You will see a metrics table, residual maps, and how to estimate the error of our model on data
# that has **no** clean reference (real scans).

# %%
import time

import numpy as np
from IPython.display import Markdown, display

from workbench import api
from workbench.baselines import estimate_background_sigma, run_baseline
from workbench.data.nifti import DWISeries
from workbench.data.phantoms import simulate_dwi
from workbench.demo import markdown_table
from workbench.metrics import evaluate_dwi, rmse
from workbench.notebook_ui import SliceViewer, small_mode
from workbench.tasks.dwi.notebook import reuse_checkpoint, tutorial_setup

SMALL = small_mode()
phantom_args, cfg = tutorial_setup(SMALL)
ph = simulate_dwi(**phantom_args)
print(ph)

# %% [markdown]
# ## 1. Run the three methods
#
# Our model is the one notebook 01 saved, when it was trained with the same settings; otherwise it is
# trained here first (its time then includes training).

# %%
results, seconds = {"noisy": ph.noisy}, {}
for name in ("mppca", "patch2self"):
    t0 = time.perf_counter()
    results[name] = run_baseline(name, ph.noisy, ph.bvals, mask=ph.mask)
    seconds[name] = time.perf_counter() - t0

t0 = time.perf_counter()
den = reuse_checkpoint("tutorial_output/quickstart/best.pt", cfg, ph.noisy.shape[3])  # notebook 01's model
if den is None:  # 01 has not run with these settings: train here
    series = DWISeries(ph.noisy, ph.affine, bvals=ph.bvals, bvecs=ph.bvecs)
    trainer = api.make_trainer([series], None, cfg, masks=[ph.mask])
    trainer.fit()
    den = api.snapshot_denoiser(trainer)
sigma_bg = estimate_background_sigma(ph.noisy, ph.mask)  # noise sigma from the air around the head
ours = den.denoise(ph.noisy, ph.bvals, ph.bvecs, mask=ph.mask, sigma=sigma_bg)  # as `workbench denoise` does
results["ours"] = ours.denoised
seconds["ours"] = time.perf_counter() - t0
print({k: f"{v:.1f} s" for k, v in seconds.items()})

# %% [markdown]
# ## 2. Metrics against the clean signal
#
# PSNR/SSIM/RMSE over the diffusion-weighted volumes inside the brain; FA and MD errors come from a
# diffusion-tensor fit of each result compared with the fit of the clean data (what a DTI study would
# see). Higher PSNR/SSIM and lower errors are better. On the tiny CI phantom with 20 training steps
# our model is undertrained; run the full size for a fair comparison.

# %%
metrics = {name: evaluate_dwi(vol, ph.clean, ph.bvals, ph.bvecs, ph.mask) for name, vol in results.items()}
display(Markdown(markdown_table(metrics, seconds)))

# %%
# NBVAL_CHECK_OUTPUT
print("methods:", list(metrics))
print("every method beats the noisy input (RMSE):",
      all(metrics[m]["rmse_dwi"] < metrics["noisy"]["rmse_dwi"] for m in ("mppca", "patch2self", "ours")))

# %% [markdown]
# ## 3. Residual maps: noisy minus denoised
#
# A good denoiser removes only noise, so its residual should look like noise: grainy, no anatomy.
# **Visible structure (edges, tissue outlines) in a residual means signal was removed**. The last panel
# is the true noise (noisy minus clean) for reference. Red: the method lowered the signal there.

# %%
residuals = {f"noisy - {m}": ph.noisy - results[m] for m in ("mppca", "patch2self", "ours")}
residuals["noisy - clean (true noise)"] = ph.noisy - ph.clean
res_viewer = SliceViewer(residuals, mask=ph.mask, symmetric=True, title="residuals")
res_viewer.volume.value = int(np.flatnonzero(ph.bvals > 50)[0])
res_viewer

# %% [markdown]
# ## 4. Quality without a reference
#
# On a real scan there is no clean signal. Our model still gives an estimate: while denoising, each
# volume is predicted *without seeing it*, so its mean squared difference to the noisy data (the
# **held-out MSE**) is, for Gaussian noise, the error to the clean signal **plus** the noise variance
# sigma². Sigma can be measured in the air around the head (`estimate_background_sigma`: no signal
# there, only noise). So
#
# &nbsp;&nbsp;&nbsp;&nbsp;**estimated RMSE = sqrt(held-out MSE − sigma²)**.
#
# The estimate is about the model's own prediction, *before* the final step that blends it with the
# noisy data, so on the phantom we compare it with the RMSE of the plain prediction (`denoise` without
# `sigma`), overall and per b-value shell (`heldout_per_volume` holds one held-out MSE per volume).

# %%
plain = den.denoise(ph.noisy, ph.bvals, ph.bvecs, mask=ph.mask)  # no sigma: the plain prediction
print(f"background sigma {sigma_bg:.1f} (true {ph.sigma:.1f})")
print(f"{'volumes':>10s} {'held-out MSE':>13s} {'est. RMSE':>10s} {'true RMSE':>10s}")
estimate = {}
for b in ["all", *np.unique(ph.bvals)]:
    sel = np.ones(len(ph.bvals), bool) if b == "all" else ph.bvals == b
    heldout = plain.heldout_per_volume[sel].mean()
    true_rmse = rmse(plain.denoised[..., sel], ph.clean[..., sel], ph.mask)
    estimate[b] = (np.sqrt(max(heldout - sigma_bg**2, 0.0)), true_rmse)
    print(f"{b if b == 'all' else f'b={b:.0f}':>10s} {heldout:13.0f} {estimate[b][0]:10.1f} {estimate[b][1]:10.1f}")
print(f"(noisy input: RMSE {rmse(ph.noisy, ph.clean, ph.mask):.1f}; "
      f"after blending: {rmse(ours.denoised, ph.clean, ph.mask):.1f})")

# %% [markdown]
# On the b=0 volumes (bright, high SNR) the estimate is close to the truth. On the darker
# diffusion-weighted volumes it comes out **too low**, down to 0: at low SNR, magnitude (Rician) noise
# varies less than sigma² and lifts the signal on average, the prediction learns that lift from the
# noisy data, and an error that prediction and target share is invisible to the held-out MSE. So on
# real scans trust it for high-SNR volumes and read it as a lower bound elsewhere.

# %%
# NBVAL_CHECK_OUTPUT
print("background sigma within 15% of the truth:", abs(sigma_bg - ph.sigma) < 0.15 * ph.sigma)
est0, true0 = estimate[min(b for b in estimate if b != "all")]  # the b=0 volumes
print("b=0 estimate within 25% of the truth:", abs(est0 - true0) < 0.25 * true0)
print("estimate below the truth on every diffusion-weighted shell:",
      all(est < true for b, (est, true) in estimate.items() if b != "all" and b > 50))

# %% [markdown]
# `workbench denoise` on the command line prints an estimate for any scan (`est_rmse_vs_clean` in its
# JSON report), without a reference. With the default MP-PCA blend it is Stein's unbiased risk estimate
# (SURE) of the blended result rather than of the plain prediction, and it behaves the same way: close
# to the truth on b=0 and b=1000 volumes, too low on a dim b=2000 shell (full-size multishell phantom at
# SNR 20: 10.0 vs 10.0 at b=0, 7.1 vs 7.0 at b=1000, 1.8 vs 7.7 at b=2000).
#
# ## What to try next
#
# - `run_baseline("nlmeans", ...)`: Rician-adapted non-local means, volume by volume.
# - Lower the SNR (`simulate_dwi(..., snr=5)`): which method degrades most?
# - Look at the residual of each method on a b=0 volume: which one removes anatomy?
