"""runtime layer (see src/bertkit/LAYERS.md)."""
