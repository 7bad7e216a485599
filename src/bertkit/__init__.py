"""bertkit: BERT pretraining and question answering in PyTorch.

The package layout follows ../STYLE.md: one module per concern (config, model, pretrain losses,
checkpoint name tables in convert, the CLI).
"""

__version__ = "0.1.0"
