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
# # 05 · Continue in napari
#
# napari is a desktop viewer for n-dimensional images. The workbench's napari plugin puts the same
# core (training with live loss weights, denoising, comparison, edge and attention maps) behind dock
# widgets under **Plugins > DWI Reconstruction Workbench** (plugin name `recon-workbench`). From a notebook
# you can open napari in the *same* Python session and hand it your arrays directly, no files needed.
#
# This needs a desktop (a display) and `pip install "recon-workbench[napari]"`. Where either is missing
# (a server, CI) the cells below only print what they would do.

# %%
import importlib.util
import os
import sys
from pathlib import Path

import numpy as np

from workbench.data.phantoms import simulate_dwi, write_phantom
from workbench.notebook_ui import small_mode
from workbench.tasks.dwi.notebook import tutorial_setup

SMALL = small_mode()
phantom_args, _ = tutorial_setup(SMALL)
ph = simulate_dwi(**phantom_args)

has_napari = importlib.util.find_spec("napari") is not None
has_plugin = importlib.util.find_spec("napari_plugin") is not None
has_display = sys.platform in ("darwin", "win32") or any(os.environ.get(v) for v in ("DISPLAY", "WAYLAND_DISPLAY"))
open_viewer = has_napari and has_display and not SMALL  # CI never opens a window
print(f"napari installed: {has_napari} | workbench plugin importable: {has_plugin} | display: {has_display}")
print("will open a napari window:", open_viewer)

# %% [markdown]
# ## The layer layout the plugin expects
#
# The core works on (X, Y, Z, N) arrays. In napari a 4D DWI layer holds **(N, X, Y, Z)**, the volume
# axis first, so napari's first slider picks the diffusion volume. The gradient table and the affine
# travel in the layer's `metadata`; that is where the plugin's widgets read them.

# %%
layer_data = np.moveaxis(ph.noisy, -1, 0)  # (X, Y, Z, N) -> (N, X, Y, Z)
voxel = np.sqrt((ph.affine[:3, :3] ** 2).sum(axis=0))
dwi_layer = dict(name="DWI phantom (noisy)", scale=(1.0, *voxel), axis_labels=("volume", "x", "y", "z"),
                 metadata={"affine": ph.affine, "bvals": ph.bvals, "bvecs": ph.bvecs, "volume_axis": 0})

# %%
# NBVAL_CHECK_OUTPUT
print("layer is (N, X, Y, Z):", layer_data.shape == (ph.noisy.shape[3], *ph.noisy.shape[:3]))
print("metadata keys:", sorted(dwi_layer["metadata"]))

# %% [markdown]
# ## Open the viewer
#
# `%gui qt` lets napari's window run next to the notebook (the kernel stays usable). Then the phantom
# goes in as layers and the plugin's **Train** widget is docked (the others, Denoise, Compare, Edge
# maps, Attention maps, are in the Plugins menu): pick the noisy layer and start training, the same
# trainer as notebooks 01–02, driven from the dock.
# Without a display this cell prints the code instead.

# %%
plan = '''
%gui qt
import napari
viewer = napari.Viewer()
viewer.add_image(layer_data, **dwi_layer)
viewer.add_image(np.moveaxis(ph.clean, -1, 0), name="clean reference", scale=(1.0, *voxel), visible=False)
viewer.add_labels(ph.mask.astype(np.int32), name="brain mask", scale=tuple(voxel), opacity=0.3)
viewer.window.add_plugin_dock_widget("recon-workbench", "Train")
'''
if open_viewer:
    from IPython import get_ipython

    get_ipython().run_line_magic("gui", "qt")
    import napari

    viewer = napari.Viewer()
    viewer.add_image(layer_data, **dwi_layer)
    viewer.add_image(np.moveaxis(ph.clean, -1, 0), name="clean reference", scale=(1.0, *voxel), visible=False)
    viewer.add_labels(ph.mask.astype(np.int32), name="brain mask", scale=tuple(voxel), opacity=0.3)
    if has_plugin:
        viewer.window.add_plugin_dock_widget("recon-workbench", "Train")
    print("napari is open in its own window; more widgets under Plugins > DWI Reconstruction Workbench")
else:
    print("No napari window here. On a desktop with napari installed this cell would run:")
    print(plan)

# %% [markdown]
# ## Or go through files
#
# Anything saved as NIfTI opens in napari with **File > Open** (the plugin reads `dwi.nii.gz` and finds
# `dwi.bval`/`dwi.bvec` beside it). The checkpoint notebook 01 saved (`tutorial_output/quickstart/best.pt`)
# can be applied with the plugin's **Denoise** widget (checkpoint file), or here with `Denoiser.from_checkpoint`.

# %%
folder = Path("tutorial_output") / f"phantom_{'x'.join(map(str, phantom_args['shape']))}_{phantom_args['scheme']}"
if not (folder / "dwi.nii.gz").exists():  # write_phantom never overwrites; the same arguments give the same data
    write_phantom(ph, folder)
for path in sorted(folder.iterdir()):
    print(path)
ckpt = Path("tutorial_output/quickstart/best.pt")
print("checkpoint from notebook 01:", ckpt if ckpt.is_file() else "not there yet (run 01_quickstart first)")
print(f"\nFrom a terminal: napari {folder / 'dwi.nii.gz'}")

# %% [markdown]
# ## What to try next
#
# - In napari, train on the phantom from the dock widget and move the loss-weight sliders while it runs.
# - Compare a baseline and our model side by side with napari's grid mode (the button at the bottom left).
