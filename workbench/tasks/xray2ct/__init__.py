"""The `xray2ct` task."""
