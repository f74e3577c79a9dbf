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
# # 06 · CT super-resolution: LR, tricubic, the network, and the truth
#
# The second task on the same core (`workbench sr ...`): a 3D network (residual-in-residual dense
# blocks, PixelShuffle-3D upsampling, a residual over tricubic) that brings a low-resolution CT
# volume onto a grid 2x or 4x finer along every axis. In this notebook you will
#
# 1. make a soil micro-CT volume the shipped network has never seen (simulated, with ground truth),
# 2. super-resolve it with the shipped x4 network and browse LR / tricubic / SR / HR slice by slice,
# 3. score both against the truth: PSNR and SSIM, and for soil the porosity and two-point-correlation
#    errors (PSNR rewards blur; these two do not),
# 4. train a small network yourself while moving the loss weights live.
#
# Run the cells one by one. In CI (`CI` set) everything is tiny.

# %%
import tempfile
from pathlib import Path

import numpy as np
import torch
from IPython.display import display

from workbench.notebook_ui import BackgroundTraining, LossPlot, LossWeightSliders, SliceViewer, small_mode
from workbench.resample import upsample
from workbench.tasks import get_task

SMALL = small_mode()
sr_task = get_task("sr")
SIZE = 32 if SMALL else 64
case = sr_task.sample_case("soil", scale=4, size=SIZE, seed=3)  # soil seed 10003: never trained on
(lr, lr_affine), (tri, hr_affine), (hr, _) = case["lr"], case["tricubic"], case["hr"]
print("LR", lr.shape, "voxel", np.round(np.abs(np.diag(lr_affine))[:3], 3), "mm | HR", hr.shape,
      "voxel", np.round(np.abs(np.diag(hr_affine))[:3], 3), "mm")

# %% [markdown]
# ## Super-resolve with the shipped network
#
# `predict_array` is what `workbench sr predict` and napari's Predict panel call: tiled over the
# volume (memory bounded), normalised from the LR volume alone, back in the input's units on the HR
# grid, with the HR affine.

# %%
sr, sr_affine = sr_task.predict_array(lr, lr_affine, scale=4)
nearest = upsample(torch.from_numpy(lr)[None, None], 4, "nearest")[0, 0].numpy()  # LR shown on the HR grid
print("SR on the HR grid:", sr.shape == hr.shape, "| same affine as HR:", np.allclose(sr_affine, hr_affine))

# %%
viewer = SliceViewer({"LR (x4 voxels)": nearest, "tricubic": tri, "network": sr, "HR truth": hr},
                     reference="HR truth", title="soil micro-CT, x4")
viewer

# %%
scores = {name: sr_task.evaluate_arrays(v, hr, kind="soil") for name, v in (("tricubic", tri), ("network", sr))}
for name, m in scores.items():
    print(f"{name:9s} " + "  ".join(f"{k} {v:.4f}" for k, v in m.items()))

# %%
# NBVAL_CHECK_OUTPUT
print("network beats tricubic on PSNR:", scores["network"]["psnr"] > scores["tricubic"]["psnr"])
print("and on the pore structure (two-point correlation):",
      scores["network"]["tpc_error"] < scores["tricubic"]["tpc_error"])

# %% [markdown]
# ## Train your own, moving the loss weights while it runs
#
# `workbench sr simulate` writes HR/LR pairs; here the same function writes a few small ones to a
# temporary folder and a short training run starts in the background. The sliders change the
# weights of the loss terms at the next step (`l1` the base term, `edge` 3D Sobel edges, `ssim`,
# `multiscale` local averages). Raise `edge` when results look blurry; lower it if noise comes back.

# %%
from workbench.tasks.sr import workflow  # noqa: E402

tmp = Path(tempfile.mkdtemp(prefix="sr_tutorial_"))
workflow.simulate(tmp / "pairs", kind="soil", scale=2, n=3, size=24 if SMALL else 48, seed=0)
cfg = sr_task.default_config(scale=2, lr_patch=8 if SMALL else 16)
if SMALL:
    cfg.model.base_filters, cfg.model.options = 8, {"growth": 4, "num_blocks": 1}
    cfg.data.batch_size = 2
cfg.train.steps, cfg.train.val_every = (12, 6) if SMALL else (300, 50)
pairs = workflow.load_training_pairs([tmp / "pairs"], (2, 2, 2))
plot = LossPlot(min_interval=1.0)
trainer = workflow.make_trainer(pairs, tmp / "run", cfg, callbacks=[plot])
run = BackgroundTraining(trainer)
sliders = LossWeightSliders(trainer.loss_weights, terms=["l1", "edge", "ssim", "multiscale"])
display(run, sliders, plot)

# %% [markdown]
# The next cell presses Start from code, waits a few steps, then raises the edge term.

# %%
if run.thread is None:
    run.start_button.click()
run.wait_for_step(3 if SMALL else 50)
sliders.sliders["edge"].value = 0.3
result = run.wait()
plot.redraw()
print(f"finished after {result.steps_done} steps ({result.reason}); best held-out loss {result.best_loss:.4g}")

# %%
# NBVAL_CHECK_OUTPUT
print("edge weight now:", trainer.loss_weights.get()["edge"])
print("training ran to the end:", result.steps_done == cfg.train.steps)
print("a checkpoint to use with `workbench sr predict --checkpoint`:", (tmp / "run" / "last.pt").is_file())
