"""bertkit: BERT pretraining and question answering in PyTorch.

The package layout follows ../STYLE.md: one module per concern (config, model, pretrain losses,
checkpoint name tables in convert, the CLI).
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    """`bertkit.QuestionAnswerer` and `bertkit.TextClassifier`, imported on first use: `import bertkit` stays fast
    (no torch)."""
    if name == "QuestionAnswerer":
        from bertkit.serve.qa import QuestionAnswerer

        return QuestionAnswerer
    if name == "TextClassifier":
        from bertkit.serve.classify import TextClassifier

        return TextClassifier
    raise AttributeError(f"module 'bertkit' has no attribute {name!r}")
