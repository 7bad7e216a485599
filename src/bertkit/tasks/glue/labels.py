"""A classifier's label order: read with its checkpoint, mapped onto the task's, written with its exports.

A task's labels are in Google's order (run_classifier.py's get_labels: MNLI contradiction, entailment, neutral).
A checkpoint names its own order: a Hugging Face config's id2label/label2id, a bertkit directory's labels.txt. A
Hub MNLI model in another order would otherwise be read as Google's, scoring 0 where it is right
(huggingface/transformers#10386: run_glue maps through the model's label2id, as this module does). Names compare
without case, spaces or dashes, and the names models commonly give GLUE's binary labels are understood
(`ALIASES`: GLUE's own descriptions of what 0 and 1 mean). transformers' placeholders LABEL_0, LABEL_1, ... name no
order: such a checkpoint is read in the task's order, as Google reads every checkpoint.
"""

from __future__ import annotations

import torch
from torch import nn

from bertkit.tasks.glue.data import GlueTask

# GLUE's label strings for the names models give them (the GLUE paper's task descriptions).
ALIASES: dict[str, dict[str, str]] = {
    "CoLA": {"unacceptable": "0", "acceptable": "1"},
    "SST-2": {"negative": "0", "positive": "1"},
    "MRPC": {"not_equivalent": "0", "equivalent": "1"},
    "QQP": {"not_duplicate": "0", "duplicate": "1"},
}


def _key(name: str) -> str:
    return name.strip().lower().replace("-", "_").replace(" ", "_")


def label_order(task: GlueTask, model_labels: list[str] | None, source: str) -> list[int] | None:
    """perm with perm[j] = the checkpoint's output that holds the task's label j; None when the checkpoint names no
    labels, the task is a regression, or the orders agree. ValueError (one line) for a label the task does not know,
    a label named twice, or another number of labels."""
    if model_labels is None or task.is_regression:
        return None
    theirs = ", ".join(model_labels)
    if len(model_labels) != task.num_labels:
        raise ValueError(f"{source}: its classifier has {len(model_labels)} labels ({theirs}); {task.name} has "
                         f"{task.num_labels} ({', '.join(task.labels)})")  # fmt: skip
    known = {_key(label): i for i, label in enumerate(task.labels)}
    known |= {_key(alias): task.labels.index(ours) for alias, ours in ALIASES.get(task.name, {}).items()}
    unknown = [label for label in model_labels if _key(label) not in known]
    if unknown:
        raise ValueError(f"{source}: label {unknown[0]!r} of its classifier ({theirs}) is not one of "
                         f"{task.name}'s ({', '.join(task.labels)})")  # fmt: skip
    task_id = [known[_key(label)] for label in model_labels]  # output i holds the task's label task_id[i]
    if sorted(task_id) != list(range(task.num_labels)):
        raise ValueError(f"{source}: its labels ({theirs}) name one of {task.name}'s labels twice")
    perm = [task_id.index(j) for j in range(task.num_labels)]
    return None if perm == list(range(task.num_labels)) else perm


def describe(task: GlueTask, model_labels: list[str], perm: list[int] | None) -> str:
    """The mapping as one line: `logit <- checkpoint output` for each of the task's labels."""
    perm = perm or list(range(task.num_labels))
    pairs = ", ".join(f"{label} <- output {i} ({model_labels[i]})" for label, i in zip(task.labels, perm, strict=True))
    what = "mapped onto" if perm != sorted(perm) else "in the order of"
    return f"labels: the checkpoint's ({', '.join(model_labels)}) {what} {task.name}'s: {pairs}"


@torch.no_grad()
def reorder_classifier(model: nn.Module, perm: list[int]) -> None:
    """Permute the classifier's output rows so that logit j is the task's label j: the same numbers as mapping
    every logit row (logit j = w[perm[j]] . h + b[perm[j]]), done once."""
    index = torch.tensor(perm, device=model.classifier.weight.device)
    model.classifier.weight.copy_(model.classifier.weight[index])
    model.classifier.bias.copy_(model.classifier.bias[index])
