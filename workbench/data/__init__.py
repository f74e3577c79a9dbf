"""Data: NIfTI I/O, DWI datasets, q-space priors, transforms and phantoms."""
