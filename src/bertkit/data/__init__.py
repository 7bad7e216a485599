"""data layer (see src/bertkit/LAYERS.md)."""
