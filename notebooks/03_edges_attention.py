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
# # 03 · Edges and attention: where the model sees structure
#
# Two ways to look inside a trained denoiser:
#
# 1. **Edge maps**: the 3D Sobel gradient magnitude (`workbench.inference.edge_map`, the same operator
#    as the `edge` loss) of the noisy input, the prediction and the clean reference. Good denoising keeps
#    the reference's tissue boundaries and removes the speckle of edges that noise creates.
# 2. **Attention maps**: the model's CBAM blocks compute a spatial gate in [0, 1] that scales their
#    features voxel by voxel. Bright: features there pass through; dark: they are suppressed.
#
# The first cell reuses the model notebook 01 saved (`tutorial_output/quickstart/best.pt`) when it was
# trained with the same settings, and otherwise trains one here (as long as 01 takes).

# %%
import numpy as np
from scipy import ndimage

from workbench import api
from workbench.baselines import estimate_background_sigma
from workbench.data.nifti import DWISeries
from workbench.data.phantoms import simulate_dwi
from workbench.metrics import edge_sharpness, rmse
from workbench.notebook_ui import AttentionViewer, SliceViewer, edge_maps, small_mode
from workbench.tasks.dwi.notebook import reuse_checkpoint, tutorial_setup

SMALL = small_mode()
phantom_args, cfg = tutorial_setup(SMALL)
ph = simulate_dwi(**phantom_args)
den = reuse_checkpoint("tutorial_output/quickstart/best.pt", cfg, ph.noisy.shape[3])  # notebook 01's model
if den is None:  # 01 has not run with these settings: train here
    series = DWISeries(ph.noisy, ph.affine, bvals=ph.bvals, bvecs=ph.bvecs)
    trainer = api.make_trainer([series], None, cfg, masks=[ph.mask])
    trainer.fit()
    den = api.snapshot_denoiser(trainer)
out = den.denoise(ph.noisy, ph.bvals, ph.bvecs, mask=ph.mask, sigma=estimate_background_sigma(ph.noisy, ph.mask))
print("denoised", out.denoised.shape)

# %% [markdown]
# ## 1. Edge maps of input, prediction and reference
#
# The `volume` slider picks the diffusion volume. In the noisy input, noise adds speckled edges inside
# the tissue, and the brain outline stands out less because the air around it is noisy too (magnitude
# noise is never zero). In a good prediction the edges follow the reference's tissue boundaries. Panel
# titles compare each edge map with the reference's (PSNR of the edge map: higher = closer).

# %%
edges = {"noisy input": edge_maps(ph.noisy), "prediction": edge_maps(out.denoised), "reference": edge_maps(ph.clean)}
edge_viewer = SliceViewer(edges, reference="reference", mask=ph.mask, cmap="magma", title="3D Sobel magnitude")
edge_viewer.volume.value = int(np.flatnonzero(ph.bvals > 50)[0])
edge_viewer

# %% [markdown]
# Two numbers over all diffusion-weighted volumes: the mean edge strength (`edge_sharpness`; lower than
# the reference's means blurrier) and how far each edge map is from the reference's (RMSE), counted
# inside the brain away from its outline (`inner`), where only tissue edges matter.

# %%
dwi = ph.bvals > 50
inner = ndimage.binary_erosion(ph.mask)
edge_error = {name: rmse(e[..., dwi], edges["reference"][..., dwi], inner) for name, e in edges.items()}
for name, vol in (("noisy input", ph.noisy), ("prediction", out.denoised), ("reference", ph.clean)):
    print(f"{name:12s} edge strength {edge_sharpness(vol[..., dwi], ph.mask):6.1f}   "
          f"edge-map error vs reference {edge_error[name]:6.1f}")

# %%
# NBVAL_CHECK_OUTPUT
print("edge maps have the data's shape:", all(e.shape == ph.noisy.shape for e in edges.values()))
print("prediction's edges closer to the reference's than the noisy input's:",
      edge_error["prediction"] < edge_error["noisy input"])

# %% [markdown]
# ## 2. CBAM attention maps
#
# `den.prepare` builds the model's input for the series once; `den.attention_maps(subject, j)` runs the
# network on volume *j* and returns one map per CBAM block. Pick the block and the volume; `opacity`
# blends the map over the denoised image. Colours are stretched to each map's own range (untick the box
# for the full 0 to 1 scale): after the tiny CI run the gates stay close to 0.5 everywhere, they have
# barely learned; after a full run, compare where they open (bright) or close with the anatomy.

# %%
subject = den.prepare(ph.noisy, ph.bvals, ph.bvecs, ph.mask)
att = AttentionViewer(den, subject, out.denoised, volume=int(np.flatnonzero(ph.bvals > 50)[0]))
att

# %%
# the pickers, driven from code
att.block.value = att.block.options[-1]
att.volume.value = 0  # a b=0 volume
att.alpha.value = 0.7
att.stretch.value = False

# %%
# NBVAL_CHECK_OUTPUT
maps = den.attention_maps(subject, 0)
print("CBAM blocks:", sorted(maps))
print("maps have the volume's shape:", all(m.shape == ph.shape[:3] for m in maps.values()))
print("values in [0, 1]:", all(float(m.min()) >= 0 and float(m.max()) <= 1 for m in maps.values()))

# %% [markdown]
# ## What to try next
#
# - Retrain with `cfg.model.use_cbam = False`: no attention maps, and compare the metrics of notebook 01.
# - Raise the `edge` loss weight (notebook 02) and compare the prediction's edge map here.
