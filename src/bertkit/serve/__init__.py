"""serve layer (see src/bertkit/LAYERS.md)."""
