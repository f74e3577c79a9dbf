"""One module per dock widget; each only marshals values and starts workers (see ``napari_plugin._workers``)."""
