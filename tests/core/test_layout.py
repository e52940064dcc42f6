"""The shape of the code the design promises: imports point one way (no circle, the head
contract below everything that trains), core names no plugin task, and the Trainer
stays an orchestrator."""
import ast
from pathlib import Path

import bertcore

PACKAGE = Path(bertcore.__file__).parent
PLUGIN_MODULES = ("bertcore_classification", "bertcore_qa", "bertcore_ner", "bertcore_nsp", "bertcore_embedding")


def imports_of(file: Path, level: int = 1) -> set[str]:
    """bertcore modules a file imports anywhere (module level or inside functions);
    `level`: the relative-import level that reaches bertcore (2 inside a subpackage)."""
    found = set()
    for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == level:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("bertcore."):
            found.add(node.module.split(".")[1])
    return {m for m in found if (PACKAGE / f"{m}.py").is_file() or (PACKAGE / m).is_dir()}


def graph() -> dict[str, set[str]]:
    """Module -> the bertcore modules it imports; a subpackage (cli, bench) is one node."""
    edges = {f.stem: imports_of(f) for f in PACKAGE.glob("*.py") if f.stem not in ("__init__", "__main__")}
    for package in (d for d in PACKAGE.iterdir() if (d / "__init__.py").is_file()):
        edges[package.name] = set().union(*(imports_of(f, level=2) for f in package.glob("*.py"))) - {package.name}
    return edges


def test_no_import_circle():
    edges = graph()
    state: dict[str, int] = {}

    def visit(node, path):
        state[node] = 1
        for nxt in edges.get(node, ()):
            assert state.get(nxt) != 1, "import circle: " + " -> ".join([*path, nxt])
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for module in edges:
        if module not in state:
            visit(module, [module])


def test_low_modules_import_nothing_above_the_model():
    edges = graph()
    above = {"heads", "mlm", "plugins", "taskmodel", "training", "pretraining", "cli", "demo", "runfolder"}
    for low in ("masking", "data", "files", "padding", "config", "model", "checkpoint", "tokenizer", "dataplan",
                "trainstate"):
        assert not edges[low] & above, (low, edges[low] & above)
    assert not edges["heads"] & {"taskmodel", "training", "pretraining", "plugins", "mlm"}, edges["heads"]


def test_core_names_no_plugin_or_task():
    """No core module imports a plugin, and the run path has no task's name or keys in it
    (the head contract carries them: required_keys, options_from_examples, ...). data.py
    reads the file formats (SQuAD, CoNLL) and so knows their keys."""
    tasks = {"classification", "ner", "qa", "nsp", "tokens", "tags", "question", "answers", "label"}
    for file in PACKAGE.rglob("*.py"):
        tree = ast.parse(file.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert not any(n.split(".")[0] in PLUGIN_MODULES for n in names), f"{file} imports a plugin"
        if file.stem in ("heads", "taskmodel", "training", "dataplan", "trainstate", "runfolder",
                         "reporting", "masking"):
            strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
            assert not strings & tasks, f"{file.name} names {strings & tasks}"


def test_trainer_is_an_orchestrator():
    tree = ast.parse((PACKAGE / "training.py").read_text(encoding="utf-8"))
    trainer = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Trainer")
    assert trainer.end_lineno - trainer.lineno < 250
    for file in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                assert node.end_lineno - node.lineno <= 80, f"{file.name}:{node.lineno} {node.name} is too long"
