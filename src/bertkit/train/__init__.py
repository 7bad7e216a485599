"""train layer (see src/bertkit/LAYERS.md)."""
