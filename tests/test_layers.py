"""The layer contract of src/bertkit/LAYERS.md, enforced: every module's bertkit imports (top level and inside
functions) stay inside what its layer may import. A forbidden import added anywhere fails this test."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "src" / "bertkit"
BELOW = {
    "runtime": set(),
    "model": set(),
    "data": {"runtime"},
    "checkpoint": {"runtime", "model", "data"},
    "train": {"runtime", "model", "data", "checkpoint"},
    "tasks": {"runtime", "model", "data", "checkpoint", "train"},
    "serve": {"runtime", "model", "data", "checkpoint"},
}
SERVE_MAY_USE_FROM_TASKS = {"data", "predict", "evaluate"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def bertkit_imports(path: Path) -> set[str]:
    """Every bertkit module `path` imports, as dotted names ('from bertkit.x import y' gives bertkit.x.y when y is a
    module, else bertkit.x)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "bertkit"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "bertkit":
            for a in node.names:
                sub = PKG.parent / Path(*f"{node.module}.{a.name}".split("."))
                is_module = sub.with_suffix(".py").exists() or (sub / "__init__.py").exists()
                found.add(f"{node.module}.{a.name}" if is_module else node.module)
    return found


def violation(importer: str, imported: str) -> str | None:
    """Why importer may not import imported, or None when it may."""
    src, dst = importer.split(".")[1:], imported.split(".")[1:]
    if not src or not dst or src[0] not in BELOW:
        return None  # the top level (cli, demo, plot, __init__) may import anything; the package itself is free
    layer, target = src[0], dst[0]
    if layer == "model" and target != "model":
        return "the model imports only torch and model/"
    if layer == target:
        if layer == "tasks" and len(src) > 1 and len(dst) > 1 and src[1] != dst[1]:
            return f"task {src[1]} imports task {dst[1]}"
        return None
    if layer == "serve" and target == "tasks":
        if len(dst) > 2 and dst[2] in SERVE_MAY_USE_FROM_TASKS:
            return None
        return "serve imports a task's data, predict and evaluate modules only, never its training module"
    if target in BELOW[layer]:
        return None
    return f"{layer}/ may import only {sorted(BELOW[layer]) or 'nothing'} from bertkit"


def test_every_module_keeps_to_its_layer():
    broken = []
    for path in sorted(PKG.rglob("*.py")):
        importer = module_name(path)
        for imported in sorted(bertkit_imports(path)):
            why = violation(importer, imported)
            if why:
                broken.append(f"{importer} imports {imported}: {why}")
    assert not broken, "\n".join(broken)


@pytest.mark.parametrize(
    "importer, imported",
    [
        ("bertkit.model.bert", "bertkit.runtime.atomic"),
        ("bertkit.tasks.squad.task", "bertkit.tasks.glue.data"),
        ("bertkit.tasks.glue.task", "bertkit.cli"),
        ("bertkit.serve.qa", "bertkit.train.loop"),
        ("bertkit.serve.qa", "bertkit.tasks.squad.task"),
        ("bertkit.data.loader", "bertkit.checkpoint.snapshot"),
        ("bertkit.runtime.dist", "bertkit.model.config"),
        ("bertkit.checkpoint.formats", "bertkit.train.loop"),
    ],
)
def test_a_forbidden_import_is_caught(importer, imported, tmp_path):
    """The checker refuses each kind of forbidden edge, both as a rule and when the import is written in a file."""
    assert violation(importer, imported)
    module, name = imported.rsplit(".", 1)
    path = tmp_path / "m.py"
    path.write_text(f"def f():\n    from {module} import {name}\n", encoding="utf-8")
    assert imported in bertkit_imports(path)


def test_inference_loads_no_training_stack():
    """Importing the QA and HTTP inference modules loads neither the training loop nor a task's training module."""
    code = (
        "import sys, bertkit.serve.qa\n"
        "bad = [m for m in sys.modules if m.startswith(('bertkit.train', 'bertkit.tasks.squad.task',"
        " 'bertkit.tasks.glue.task', 'bertkit.tasks.pretrain.task'))]\n"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""
