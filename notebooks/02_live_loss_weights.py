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
# is running. In CI (`CI` set) everything is tiny and the slider moves are made from code. At full size
# training takes as long as in notebook 01 (8-15 minutes on a 2-core CPU); press Stop whenever you have seen enough.

# %%
import numpy as np
from IPython.display import display

from workbench import api
from workbench.data.nifti import DWISeries
from workbench.data.phantoms import simulate_dwi
from workbench.notebook_ui import BackgroundTraining, LossPlot, LossWeightSliders, small_mode
from workbench.tasks.dwi.notebook import SnapshotMonitor, tutorial_setup

SMALL = small_mode()
phantom_args, cfg = tutorial_setup(SMALL)
ph = simulate_dwi(**phantom_args)
print(ph)

# %% [markdown]
# ## What each loss term does, and when to raise it
#
# | term | what it compares between prediction and target |
# |---|---|
# | `mse` | squared error: the self-supervised (Noise2Self) loss itself, the base term (keep it ~1) |
# | `l1`, `charbonnier` | absolute error (Charbonnier: a smooth L1); less swayed by a few large errors |
# | `rmse` | square root of `mse` |
# | `edge` | strength of 3D Sobel edges: raise it when **edges look blurry** |
# | `gradient` | neighbour-to-neighbour differences along each axis: like `edge`, finer |
# | `ssim` | local mean, contrast and structure (1 − SSIM) |
# | `multiscale` | L1 at full, half and quarter resolution: local averages |
# | `fft` | magnitude of the 3D Fourier spectrum: how much fine detail there is |
#
# The target is the *noisy* volume, so `edge`, `gradient` and `fft` also reward the edges and fine
# detail that noise creates. Rules of thumb:
#
# - **edges blurry** (sharpness ratio below 1): raise `edge` step by step (0.05 → 0.1 → 0.3);
# - **noise left** (ratio above 1, grainy images): lower `edge`, `gradient` and `fft`, keep `mse` at 1;
# - **checkerboard or grid patterns**: lower `fft` and `gradient` and raise `multiscale` or `ssim`,
#   which compare local averages and so do not reward high-frequency patterns.
#
# Judge by the second panel: a good change moves the sharpness ratio towards 1 without lowering PSNR.

# %%
series = DWISeries(ph.noisy, ph.affine, bvals=ph.bvals, bvecs=ph.bvecs)
dwi_volumes = np.flatnonzero(ph.bvals > 50)
watch = dwi_volumes[np.linspace(0, len(dwi_volumes) - 1, 2 if SMALL else 4).astype(int)]  # volumes to score
plot = LossPlot(min_interval=1.0)
monitor = SnapshotMonitor(ph.noisy, ph.clean, ph.bvals, ph.bvecs, ph.mask, volumes=watch)
trainer = api.make_trainer([series], None, cfg, masks=[ph.mask], callbacks=[plot, monitor])
monitor.bind(trainer)  # the monitor copies this trainer's model at each validation
run = BackgroundTraining(trainer)
sliders = LossWeightSliders(trainer.loss_weights)
print("scored volumes:", watch.tolist(), "| starting weights:", trainer.loss_weights.get())

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
run.wait_for_step(5 if SMALL else 20)
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
# Every change is recorded: the trainer reports the step from which each new weight counted (a
# `WeightsChanged` event, kept by the live plot), and checkpoints store the same list, so a run stays
# reproducible.

# %%
for step, name, old, new in plot.history["weight_changes"]:
    print(f"from step {step}: {name} {old:g} -> {new:g}")

# %% [markdown]
# ## What to try next
#
# - Start again with a new trainer (re-run from the `make_trainer` cell) and set `edge` to 0 first:
#   compare the sharpness ratio.
# - Try `fft` at 0.5 and look for checkerboard patterns in the denoised images (notebook 01's viewer).
# - Put the weights you like into `cfg.loss.weights` so the next run starts with them.
