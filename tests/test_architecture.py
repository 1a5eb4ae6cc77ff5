"""The package's shape: layers with imports pointing down, no import cycles, a TF-free base, short
functions, and run-folder file names owned by RunDir alone."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT

PACKAGE = ROOT / "tf_transfer"
BASE = {"tf_transfer", "tf_transfer.errors", "tf_transfer.logs", "tf_transfer.folders", "tf_transfer.fs",
        "tf_transfer.config", "tf_transfer.cli", "tf_transfer.tasks"}
COMMANDS = {f"tf_transfer.{c}" for c in ("train", "tune", "evaluate", "export", "predict", "serve", "launch",
                                         "publish", "pretrain", "__main__")}
# Which groups a group may import from (besides itself). Building blocks import the base and only the
# blocks listed; workflows use every block; commands use workflows and blocks.
ALLOWED = {
    "base": set(),
    "keras": set(),
    "data": {"base"},
    "models": {"base", "keras"},
    "training": {"base", "keras", "data", "models"},
    "evaluation": {"base"},
    "serving": {"base", "data"},
    "workflows": {"base", "keras", "data", "models", "training", "evaluation", "serving"},
    "commands": {"base", "keras", "data", "models", "training", "evaluation", "serving", "workflows"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def group(module: str) -> str:
    if module in BASE:
        return "base"
    if module in COMMANDS:
        return "commands"
    if module == "tf_transfer._keras":
        return "keras"
    return module.split(".")[1]


def imports_of(module: str) -> set[str]:
    """Every tf_transfer module `module` imports, at module level or inside functions."""
    tree = ast.parse(MODULES[module].read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("tf_transfer"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tf_transfer"):
            for alias in node.names:  # `from pkg import submodule` imports the submodule
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in MODULES else node.module)
    return {m for m in found if m != module}


GRAPH = {m: imports_of(m) for m in MODULES}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_cycle_detector_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_in_the_package():
    assert cycles(GRAPH) == []


def test_imports_point_down_the_layers():
    wrong = [f"{m} -> {t}" for m, targets in GRAPH.items() for t in targets
             if group(t) != group(m) and group(t) not in ALLOWED[group(m)]]
    assert not wrong, "imports against the layering:\n" + "\n".join(sorted(wrong))


def test_the_base_imports_no_tensorflow():
    code = "import sys\n" + "".join(f"import {m}\n" for m in sorted(BASE)) + "print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False"


def test_functions_fit_on_a_screen():
    declarative = {("tf_transfer/models/backbones.py", "_registry")}  # a table of names
    long = []
    for path in MODULES.values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                where = (str(path.relative_to(ROOT)), node.name)
                if lines > 60 and where not in declarative:
                    long.append(f"{where[0]}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, "\n".join(long)


def test_the_recipe_fits_on_one_screen():
    from tf_transfer.workflows import recipe

    tree = ast.parse(Path(recipe.__file__).read_text())
    (fn,) = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "fine_tune"]
    assert fn.end_lineno - fn.lineno + 1 <= 25
    branches = [n for n in ast.walk(fn) if isinstance(n, ast.If | ast.For | ast.While | ast.Try | ast.IfExp)]
    assert not branches, "the recipe reads straight through; resume and the like belong to the objects it calls"


@pytest.mark.parametrize("constant", ["CONFIG", "VERSIONS", "SPLIT_MANIFEST", "DATA_SUMMARY", "SKIPPED",
                                      "HISTORY_LOG", "HISTORY", "STATE", "METRICS", "METRICS_TEXT", "PHASE1_METRICS",
                                      "REPORT", "LOG", "PLOTS",
                                      "EXPORT_PATH", "BASELINE", "TENSORBOARD", "CHECKPOINTS"])
def test_run_folder_names_live_in_rundir_only(constant):
    from tf_transfer.folders import RunDir

    name = getattr(RunDir, constant)
    # a path built from it: run_dir / "metrics.json", or ".../metrics.json" inside a string
    pattern = re.compile(rf"""/\s*["']{re.escape(name)}["']|/{re.escape(name)}["']""")
    files = [*PACKAGE.rglob("*.py"), *(ROOT / "tests").rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py"),
             *(ROOT / "notebooks").glob("*.ipynb")]
    users = [str(p.relative_to(ROOT)) for p in files
             if p.name not in ("folders.py", "test_architecture.py") and pattern.search(p.read_text())]
    assert not users, f"{name} appears outside RunDir: {users}"
