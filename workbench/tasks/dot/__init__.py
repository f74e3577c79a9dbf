"""The `dot` task."""
