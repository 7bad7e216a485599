"""tasks/glue layer (see src/bertkit/LAYERS.md)."""
