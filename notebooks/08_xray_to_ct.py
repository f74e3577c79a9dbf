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
# # 08 · CT from two X-rays: AP and lateral radiographs -> a 3D volume
#
# A chest CT takes hundreds of projections; a chest radiograph takes one. With two, a frontal
# (anteroposterior, **AP**) and a side (**lateral**) view, the `xray2ct` task reconstructs a whole CT
# volume: 64³ voxels of 5 x 5 x 3.75 mm over a 320 x 320 x 240 mm field (stage 1), refined to 128³
# (stage 2). Two views cannot determine 262 144 unknowns; what fills the gap is what chests look like,
# learned from training volumes. In this notebook you will
#
# 1. look at the geometry and the physics: a held-out torso phantom, its CT slices and its two X-rays,
#    line integrals, Beer-Lambert and photon noise;
# 2. reconstruct it with back-projection, a mean atlas, ridge regression and the network (stage 1), then
#    refine the network's volume to 128³ (stage 2), and score them;
# 3. explore phantoms, doses, methods and slices with widgets;
# 4. train a (tiny) network yourself through the same API, and get the command lines for a real run.
#
# Run the cells one by one. In CI (`CI` set) everything is small.

# %%
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from IPython.display import display

from workbench.notebook_ui import LossPlot, small_mode
from workbench.tasks import get_task
from workbench.tasks.xray2ct import workflow
from workbench.tasks.xray2ct.data import load_dataset
from workbench.tasks.xray2ct.geometry import hu_to_mu, project_hu
from workbench.tasks.xray2ct.metrics import evaluate_ct
from workbench.tasks.xray2ct.notebook import (METHODS, VIEWS, XrayExplorer, compare_figure, evaluate_all,
                                              metrics_table, noisy_xrays, show_ct, show_xray)
from workbench.tasks.xray2ct.phantoms import LABELS, simulate_phantom

SMALL = small_mode()
xray_task = get_task("xray2ct")
SEED = 900_000_001                 # outside every training set
case = workflow.sample_case(seed=SEED)
g, ct, labels, xrays = case["geometry"], case["ct"], case["labels"], case["xrays"]

# %%
# NBVAL_CHECK_OUTPUT
print(f"CT {ct.shape} of {' x '.join(f'{v:g}' for v in g.voxel_mm)} mm voxels over {g.fov_mm} mm, "
      f"axes X (patient's left), Y (anterior), Z (head)")
print(f"{g.kind} beams, views {g.views}: {g.detector_px[0]} x {g.detector_px[1]} detector pixels of "
      f"{' x '.join(f'{v:g}' for v in g.pixel_mm('ap'))} mm, {g.photons:.0e} photons per pixel")
shares = ", ".join(f"{LABELS[k]} {np.mean(labels == k):.0%}" for k in sorted(LABELS) if k)
print("X-rays", xrays.shape, xrays.dtype, "| share of the field:", shares)

# %% [markdown]
# ## 1 · Geometry and physics
#
# The phantom is a procedural chest: soft tissue under fat, lungs with vessel trees, heart, aorta,
# spine, ribs and sternum, in Hounsfield units (HU: air -1000, water 0, bone several hundred to a
# thousand), each case with its own shape, pose and smooth deformation. The **AP** view's source is in
# front of the patient and its beams run back along -Y, so its image has axes (X, Z); the **lateral**
# view's source is on the patient's right and its beams run along +X, image axes (Y, Z). Slices are
# drawn as a radiologist reads them (axial from the feet, coronal from the front, sagittal with anterior
# on the left); the dotted lines on the X-rays are where the slices above them cut.

# %%
mid = {v: g.size // 2 for v in VIEWS}
fig, axes = plt.subplots(1, 5, figsize=(14, 3.2), layout="constrained")
for ax, view in zip(axes, VIEWS):
    im = show_ct(ax, ct, view, mid[view], g.fov_mm, title=f"{view} slice {mid[view]}", labels=True)
fig.colorbar(im, ax=axes[:3], shrink=0.8, label="HU")
for k, ax in enumerate(axes[3:]):
    im = show_xray(ax, xrays, g, k, slice_at=("axial", mid["axial"]))
fig.colorbar(im, ax=axes[3:], shrink=0.8, label="line integral")
plt.show()

# %% [markdown]
# **Line integrals.** Every detector pixel measures one ray: the integral of the linear attenuation
# coefficient mu along it, $p = \int \mu\,dl$, with $\mu = \mu_\mathrm{water}(1 + \mathrm{HU}/1000)$ and
# $\mu_\mathrm{water} = 0.0193$ /mm (about 70 keV, a 120 kVp chest beam); a chest gives $p$ of about 2 to 6.
# The projector (Joseph's method, differentiable, so a re-projection can enter a loss) samples each ray
# once per voxel plane; for parallel beams that is exactly the sum of the voxels along the ray times
# the voxel length, which the next cell checks.
#
# **Beer-Lambert.** Of the $N_0$ photons sent along a ray, $N_0 e^{-p}$ arrive on average; the line
# integral is read back as $p = -\ln(I / N_0)$.
#
# **Photon noise.** The count $I$ is Poisson, so the noise of $p$ is about $1/\sqrt{N_0 e^{-p}}$: it grows
# behind thick, dense anatomy and as the dose ($N_0$ photons per pixel) goes down.

# %%
clean = project_hu(ct, g)
DOSES = (1e2, 1e3, 1e4, 1e5)
fig, axes = plt.subplots(1, len(DOSES) + 1, figsize=(14, 3.2), layout="constrained")
for ax, n0 in zip(axes, DOSES):
    show_xray(ax, noisy_xrays(ct, g, n0, SEED), g, 0, vmax=float(clean.max()), title=f"AP, {n0:.0e} photons/px")
n0 = 1e4
resid = (noisy_xrays(ct, g, n0, SEED) - clean).ravel()
p = clean.ravel()
bins = np.linspace(0.5, p.max(), 12)
which = np.digitize(p, bins)
centres = [p[which == i].mean() for i in range(1, len(bins)) if (which == i).sum() > 20]
stds = [resid[which == i].std() for i in range(1, len(bins)) if (which == i).sum() > 20]
ax = axes[-1]
ax.plot(p, np.abs(resid), ".", ms=1, alpha=0.2, color="0.5", label="|noise| per pixel")
ax.plot(centres, stds, "o", color="C3", label="std per bin")
pp = np.linspace(0, p.max(), 100)
ax.plot(pp, 1 / np.sqrt(n0 * np.exp(-pp)), "-", color="C0", label=r"$1/\sqrt{N_0 e^{-p}}$")
ax.set(xlabel="line integral p", ylabel="noise of p", title=f"photon noise at {n0:.0e} photons/px", yscale="log")
ax.legend(fontsize=7)
plt.show()

# %%
# NBVAL_CHECK_OUTPUT
mu = hu_to_mu(ct)
close = dict(rtol=1e-4, atol=1e-4)
print("AP = sum over y of mu x voxel length:", np.allclose(clean[0], mu.sum(1) * g.voxel_mm[1], **close))
print("lateral = sum over x of mu x voxel length:", np.allclose(clean[1], mu.sum(0) * g.voxel_mm[0], **close))
ratio = np.array(stds) * np.sqrt(n0 * np.exp(-np.array(centres)))      # measured noise / 1/sqrt(N0 e^-p)
print(f"line integrals through the body up to {clean.max():.0f}; at 1e4 photons/px the measured noise is within "
      f"30% of 1/sqrt(N0 e^-p): {bool(np.all(np.abs(ratio - 1) < 0.3))}")

# %% [markdown]
# ## 2 · Reconstruct the held-out phantom
#
# Four methods on the same two noisy X-rays (`workbench xray2ct baseline ...` and `workbench xray2ct predict`):
#
# - **back-projection**: each view's line integral spread evenly along its ray (p divided by the ray's
#   length through the field), the two views averaged. No training: what the geometry alone says.
# - **atlas**: the mean of the training volumes, whatever the X-rays (what a model that ignores its
#   input scores).
# - **ridge**: a linear statistical shape model: the principal components of the training volumes,
#   their coefficients regressed on the downsampled X-rays by ridge regression (penalty by generalised
#   cross-validation).
# - **network** (stage 1): a 2D encoder per view, whose features are *lifted* into 3D along that view's
#   rays (the geometry, not the network, places them), and a 3D decoder that decides where along each
#   ray the attenuation sits. Trained on simulated phantoms and crops of a real chest CT, with a photon
#   count drawn per case over a decade around 1e5. The shipped network's volume is then **fused with the
#   ridge model's** by a small 3D U-Net that weighs the two voxel by voxel (trained on phantoms neither had
#   seen: the two err in different places); `predictor.predict(xrays, fuse=False)` gives the network alone.
#
# Then **stage 2** (`predict --refine`): the `sr` task's refinement network (x2) on the network's 64³ volume
# -> 128³, trained on stage-1 outputs against 128³ references, so it learns to fix stage 1's errors as well as
# to add detail. It is scored against the phantom rendered on the 128³ grid, beside stage 1 upsampled
# trilinearly. It takes about half a minute on two CPU cores (a second on a GPU), so CI skips it.

# %%
predictor = workflow.XrayPredictor.from_checkpoint()  # the shipped network + its fusion with ridge (weights/)
linear = workflow.open_linear()                        # atlas + ridge (weights/xray2ct_linear.npz)
results, seconds = {}, {}
for method in METHODS:
    t0 = time.perf_counter()
    results[method] = workflow.reconstruct(method, xrays, g, predictor=predictor, linear=linear)
    seconds[method] = time.perf_counter() - t0
REFINE = not SMALL                                     # stage 2 (weights/xray2ct_stage2.pt)
if REFINE:
    t0 = time.perf_counter()
    refined = workflow.refine(results["network"])
    seconds["stage 2"] = time.perf_counter() - t0
    fine_ct = simulate_phantom(SEED, 2 * g.size, g.fov_mm)[0]    # the same phantom on the 128³ grid
    upsampled = F.interpolate(torch.from_numpy(results["network"])[None, None], scale_factor=2, mode="trilinear",
                              align_corners=False)[0, 0].numpy()
print(" | ".join(f"{m} {s:.2f} s" for m, s in seconds.items()))

# %% [markdown]
# Each method in the three central slices, and its difference to the phantom (red: too dense, blue: not
# dense enough). Back-projection smears everything along the rays; the atlas is a blurred average chest;
# ridge bends the average toward this patient; the network places lungs, heart and spine.

# %%
fig = compare_figure(ct, results, g.fov_mm)
plt.show()

# %%
if REFINE:
    fig = compare_figure(ct, {"network": results["network"], "network, upsampled": upsampled, "stage 2": refined},
                         g.fov_mm, fine_reference=fine_ct)
    plt.show()

# %% [markdown]
# The task's metrics (`workbench xray2ct evaluate`): PSNR and SSIM on the HU window [-1000, 1000] mapped
# to [0, 1]; the mean absolute error in HU; Dice of the lungs (below -400 HU, inside the body) and of bone
# (above 250 HU), each segmented the same way in both volumes; and the **re-projection error**: how far the
# X-rays of the result are from the input X-rays (relative), a check that needs no ground truth.

# %%
scores = evaluate_all(results, ct, xrays, g)
print(metrics_table(scores))
if REFINE:
    fine_scores = evaluate_all({"network, upsampled": upsampled, "stage 2": refined}, ct, fine_reference=fine_ct)
    print("\nagainst the phantom on the 128³ grid:")
    print(metrics_table(fine_scores, keys=("psnr", "ssim", "mae_hu", "dice_lung", "dice_bone")))

# %%
# NBVAL_CHECK_OUTPUT
print("every result is 64³ HU on the phantom's grid:", all(v.shape == ct.shape for v in results.values()),
      "| finite:", all(bool(np.isfinite(v).all()) for v in results.values()))
print("the network beats back-projection and the atlas in PSNR:",
      scores["network"]["psnr"] > max(scores["backprojection"]["psnr"], scores["atlas"]["psnr"]))
print("ridge re-projects closer to the X-rays than the atlas:",
      scores["ridge"]["reprojection_error"] < scores["atlas"]["reprojection_error"])
if REFINE:
    print("stage 2 gives 128³:", refined.shape, "| closer to the fine phantom than upsampling (MAE):",
          fine_scores["stage 2"]["mae_hu"] < fine_scores["network, upsampled"]["mae_hu"])

# %% [markdown]
# ## 3 · Explore
#
# Pick a **phantom seed** (any seed above 900 000 000 is held out), the **dose** (photons per detector
# pixel: 1e5 is what the shipped models saw, give or take a factor of three), a **method**, a **view** and
# a **slice**: the X-rays, the reconstruction, its difference to the phantom and the metrics update. The
# last panel collects the PSNR of every (method, dose) tried on this phantom. Reconstructions are cached.

# %%
explorer = XrayExplorer(predictor, linear, seed=SEED)
display(explorer)

# %% [markdown]
# The next cell moves the widgets from code (what you would do by hand): a hundredth of the dose, the
# axial view; then it sweeps the dose for all four methods at once.

# %%
explorer.photons.value = 1e3
explorer.view.value = "axial"
curve = explorer.sweep([1e3, 1e5] if SMALL else [1e2, 3e2, 1e3, 3e3, 1e4, 3e4, 1e5, 1e6])
for r in sorted(curve, key=lambda r: (METHODS.index(r["method"]), r["photons"])):
    print(f"{r['method']:14s} {r['photons']:8.0e} photons/px: PSNR {r['psnr']:5.2f} dB, SSIM {r['ssim']:.3f}, "
          f"Dice lungs {r['dice_lung']:.2f}, {r['seconds'] * 1e3:.0f} ms")

# %%
# NBVAL_CHECK_OUTPUT
print("reconstructed (method, photons/px):", sorted((r["method"], f"{r['photons']:.0e}") for r in explorer.records))

# %% [markdown]
# ## 4 · Train your own
#
# The shipped models were trained on 600 simulated phantoms (64³, with 128³ references for stage 2) and 24
# crops of the real chest CT (`python scripts/train_xray2ct_weights.py`). Here the same functions run a tiny
# version: a few phantoms on a 32³ grid (32 x 32 pixel X-rays), no real-CT crops (`options.real_ct_volumes`)
# and a narrower network for a few steps of `workflow.make_trainer`, the trainer the command line uses (about
# two minutes on two CPU cores outside CI). Its loss: L1 + SSIM + edges, deep supervision of the coarser
# outputs, and projection consistency; the X-rays are re-projected from each volume with fresh photon noise at
# every step.

# %%
tmp = Path(tempfile.mkdtemp(prefix="xray2ct_tutorial_"))
SIZE = 32
workflow.simulate(tmp / "data", n=4 if SMALL else 16, size=SIZE, hr_size=0, workers=1 if SMALL else None)
dataset = load_dataset(tmp / "data")
cfg = xray_task.default_config(real_ct_volumes=0)
cfg.model.base_filters, cfg.model.options = (4 if SMALL else 8), {"view_channels": 4}   # the shipped one: 12, 8
cfg.data.batch_size = 2
cfg.train.steps = 2 if SMALL else 40
cfg.train.val_every = cfg.train.checkpoint_every = 2 if SMALL else 10
plot = LossPlot(min_interval=1.0)
trainer = workflow.make_trainer(dataset, tmp / "run", cfg, callbacks=[plot])
display(plot)
result = trainer.fit()
plot.redraw()
mine = workflow.XrayPredictor.from_checkpoint(tmp / "run" / "best.pt")
small_case = workflow.sample_case(seed=SEED, size=SIZE)
mine_ct = mine.predict(small_case["xrays"])
m = evaluate_ct(mine_ct, small_case["ct"], xrays=small_case["xrays"], geometry=small_case["geometry"])
print(f"{len(dataset)} cases; finished after {result.steps_done} steps ({result.reason}); your network on the "
      f"{SIZE}³ phantom: PSNR {m['psnr']:.1f} dB, SSIM {m['ssim']:.2f} (a few steps: expect a blur)")

# %%
# NBVAL_CHECK_OUTPUT
print("training ran to the end:", result.steps_done == cfg.train.steps)
print("best.pt holds the geometry it was trained for:", mine.geometry == small_case["geometry"],
      "| prediction", mine_ct.shape)

# %% [markdown]
# For a real run, on the command line (`workbench config --task xray2ct` prints the stage-1 config to
# start from; `--steps`, `--config` and `--resume` work as for every task):

# %%
print("""\
workbench xray2ct simulate DATA --n 600 --seed 1     # 64³ phantoms, 128³ references, AP + lateral X-rays
workbench xray2ct train DATA --out RUN1              # stage 1: X-rays -> 64³
workbench xray2ct train DATA --out RUN2 --stage 2 --stage1 RUN1/best.pt   # stage 2: 64³ -> 128³
workbench xray2ct train DATA --out LIN --stage linear                     # the atlas and the ridge model
workbench xray2ct predict --ap xray_ap.nii.gz --lateral xray_lat.nii.gz -o ct.nii.gz \\
    --checkpoint RUN1/best.pt --refine RUN2/best.pt
workbench xray2ct baseline ridge --ap xray_ap.nii.gz --lateral xray_lat.nii.gz -o ridge.nii.gz --model LIN/linear.npz
workbench xray2ct evaluate ct.nii.gz --reference DATA/case_000/ct_hr.nii.gz""")

# %% [markdown]
# ## What to try next
#
# - Turn the dose down to 1e2-1e3 photons per pixel: which method degrades first, and why does the atlas not
#   care?
# - Try other seeds: phantoms differ in size, pose and lung shape; compare the Dice of the lungs across methods.
# - Project a real CT (`workbench xray2ct project CT.nii.gz -o CASE`) and reconstruct it from its two X-rays.
# - Train at 64³ on a real simulated set and explore your network instead of the shipped one:
#   `XrayExplorer(workflow.XrayPredictor.from_checkpoint("RUN1/best.pt"), linear)`.
