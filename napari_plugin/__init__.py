"""napari plugin of the reconstruction workbench: train, inspect and review 3D reconstructions.

Everything here is a thin layer over :mod:`workbench` (the core never imports
this package, Qt or napari). Widgets marshal values into
:class:`workbench.config.Config` and hand the work to napari ``thread_worker``
generators (:mod:`napari_plugin._workers`) that yield the core's typed events,
so the viewer never freezes.

Importing this package is cheap: no Qt, napari or torch import happens here.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
