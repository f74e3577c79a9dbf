"""The `sr` task."""
