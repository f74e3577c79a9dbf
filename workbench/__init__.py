"""A reconstruction workbench for 3D medical volumes.

The core (this package) imports only numpy, torch, nibabel, DIPY and friends —
never Qt, napari or ipywidgets — so the CLI, the napari plugin and the notebooks
all call the same functions in :mod:`workbench.api`.
"""

__version__ = "0.1.0"
