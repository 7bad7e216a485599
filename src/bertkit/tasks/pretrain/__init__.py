"""tasks/pretrain layer (see src/bertkit/LAYERS.md)."""
