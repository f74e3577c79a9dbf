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
# # 02 · Change the loss while it trains
#
# The training loss is a weighted sum of terms (`mse`, `edge`, ...). Here you start training in the
# background with a button, then move one slider per term: the new weight takes effect at the next
# step. You will see
#
# - a live plot of each loss term (dotted lines mark your weight changes),
# - a second panel that, at every validation, copies the model being trained and scores it on the
#   phantom against the clean truth: **PSNR** (overall error) and **edge sharpness** (mean 3D Sobel
#   edge strength of the prediction over that of the clean signal: below 1 is blurrier than the truth,
#   above 1 has noise or artefacts left).
#
# Run the cells one by one (not "Run All"): the kernel can only react to the sliders while no cell
# is running. In CI (`CI` set) everything is tiny and the slider moves are made from code.

# %%
import numpy as np
from IPython.display import display

from workbench import api
from workbench.data.nifti import DWISeries
from workbench.data.phantoms import simulate_dwi
from workbench.notebook_ui import (BackgroundTraining, LossPlot, LossWeightSliders, SnapshotMonitor, small_mode,
                                   tutorial_setup)

SMALL = small_mode()
phantom_args, cfg = tutorial_setup(SMALL)
ph = simulate_dwi(**phantom_args)
print(ph)

# %% [markdown]
# ## What each loss term does, and when to raise it
#
# The target is the *noisy* volume (self-supervised), so every term pulls towards the signal plus
# noise; the network can only predict the part of it that other volumes share, the signal.
#
# | term | what it compares | raise it when | too much of it |
# |---|---|---|---|
# | `mse` | squared error, the Noise2Self loss itself | the base term; keep it at ~1 | — |
# | `l1`, `charbonnier` | absolute error (Charbonnier: smooth L1) | few bright outliers (e.g. CSF) dominate | — |
# | `rmse` | root of `mse` | you want a term on the scale of the signal | — |
# | `edge` | 3D Sobel edge strength | **edges look blurry** (sharpness ratio < 1) | noise comes back (ratio > 1) |
# | `gradient` | neighbour differences | thin structures smeared along one axis | noise left |
# | `ssim` | local mean, contrast and structure | contrast between tissues washes out | blotchy patches |
# | `multiscale` | L1 at 1, 1/2 and 1/4 resolution | **checkerboard / grid artefacts**, slow intensity drifts | slightly blurrier detail |
# | `fft` | magnitude spectrum | fine texture lost | ringing, checkerboard |
#
# Rules of thumb: **edges blurry** → raise `edge` (0.1–0.3); **noise left** → lower `edge`/`gradient`/`fft`,
# keep `mse` at 1; **checkerboard** → raise `multiscale`, lower `fft`. Judge by the second panel:
# PSNR should not drop while the sharpness ratio moves towards 1.

# %%
series = DWISeries(ph.noisy, ph.affine, bvals=ph.bvals, bvecs=ph.bvecs)
dwi_volumes = np.flatnonzero(ph.bvals > 50)
watch = dwi_volumes[:: max(1, len(dwi_volumes) // (2 if SMALL else 4))][: 2 if SMALL else 4]
plot = LossPlot(min_interval=1.0)
monitor = SnapshotMonitor(ph.noisy, ph.clean, ph.bvals, ph.bvecs, ph.mask, volumes=watch)
trainer = api.make_trainer([series], None, cfg, masks=[ph.mask], callbacks=[plot, monitor])
monitor.bind(trainer)  # the monitor copies this trainer's model at each validation
run = BackgroundTraining(trainer)
sliders = LossWeightSliders(trainer.loss_weights)
print("scored volumes:", list(watch), "| starting weights:", trainer.loss_weights.get())

# %% [markdown]
# Press **Start training**, then move the sliders. **Stop** ends training after the current step
# (the model keeps what it learned).

# %%
display(run, sliders, plot, monitor)

# %% [markdown]
# The next cell does from code what you would do by hand: it presses Start, waits for a few steps,
# then raises the edge term and adds a little `multiscale`. Watch the dotted lines appear in the
# term plot. (If you already pressed Start yourself, it does not press it again.)

# %%
if run.thread is None:
    run.start_button.click()
run.wait_for_step(5 if SMALL else 100)
sliders.sliders["edge"].value = 0.3
sliders.sliders["multiscale"].value = 0.2

# %% [markdown]
# Wait for training to finish before using the model (this blocks until the last step; press Stop
# above first if you do not want to wait).

# %%
result = run.wait()
plot.redraw()
print(f"finished after {result.steps_done} steps ({result.reason})")
for rec in monitor.records:
    print(f"step {rec['step']:4d}: PSNR {rec['psnr']:.2f} dB, edge sharpness ratio {rec['edge_ratio']:.2f}")
print(f"noisy input: PSNR {monitor.noisy_scores['psnr']:.2f} dB, ratio {monitor.noisy_scores['edge_ratio']:.2f}")

# %%
# NBVAL_CHECK_OUTPUT
weights = trainer.loss_weights.get()
print("edge weight now:", weights["edge"], "| multiscale weight now:", weights["multiscale"])
print("training ran to the end:", result.steps_done == cfg.train.steps)
print("one snapshot score per validation:", len(monitor.records) == len(result.history))
print("snapshots beat the noisy input (PSNR):", all(r["psnr"] > monitor.noisy_scores["psnr"] for r in monitor.records))

# %% [markdown]
# Every change is recorded: the trainer's `loss_weights.history` (and the checkpoint, when training
# writes to a folder) lists when each weight changed, so a run stays reproducible.

# %%
for change in trainer.loss_weights.history:
    print(change)

# %% [markdown]
# ## What to try next
#
# - Start again with a new trainer (re-run from the `make_trainer` cell) and set `edge` to 0 first:
#   compare the sharpness ratio.
# - Try `fft` at 0.5 and look for checkerboard patterns in the denoised images (notebook 01's viewer).
# - Put the weights you like into `cfg.loss.weights` so the next run starts with them.
