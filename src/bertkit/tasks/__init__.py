"""tasks layer (see src/bertkit/LAYERS.md)."""
