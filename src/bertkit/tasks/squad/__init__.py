"""tasks/squad layer (see src/bertkit/LAYERS.md)."""
