"""model layer (see src/bertkit/LAYERS.md)."""
