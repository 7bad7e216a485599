"""checkpoint layer (see src/bertkit/LAYERS.md)."""
