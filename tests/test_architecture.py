"""The package's two wings and the direction between them, read from the source's import statements (ast).

The library (``cvae``: distributions, likelihoods, networks, the model, objectives, estimators, training) knows
nothing of the paper's experiment (``cvae.paper``: the quadrant task, its data, runs, evaluation and commands);
the experiment uses the library like any user. No module imports itself back through others (no circles).
Imports inside functions count as much as those at the top.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cvae"
# The package's front doors, which name the experiment for the user's convenience and which no library module
# imports: ``python -m cvae`` (the commands), and __init__'s table of public names, imported on first use (CVAE,
# BaselineNet and QuadrantTask come from cvae.paper; ``import cvae`` alone imports none of it).
ENTRY_POINTS = {"cvae", "cvae.__main__"}


def module_name(path: Path, package: Path) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, package_dir: Path, modules: set[str]) -> set[str]:
    """The package's modules that the file at path imports, anywhere in it (ImportFrom resolved against its
    package; ``from package import module`` counts as importing that module)."""
    name = module_name(path, package_dir)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            targets = [f"{module}.{alias.name}" if f"{module}.{alias.name}" in modules else module
                       for alias in node.names]
        else:
            continue
        found.update(target for target in targets if target in modules and target != name)
    return found


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    paths = {module_name(path, package): path for path in package.rglob("*.py")}
    return {name: imports(path, package, set(paths)) for name, path in paths.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def is_experiment(name: str) -> bool:
    return name == "cvae.paper" or name.startswith("cvae.paper.")


def test_the_library_imports_nothing_of_the_experiment():
    graph = import_graph()
    library = {name for name in graph if not is_experiment(name) and name not in ENTRY_POINTS}
    assert "cvae.fitting" in library and "cvae.paper.experiment" in graph  # the layout this test is about
    wrong = {name: sorted(filter(is_experiment, graph[name])) for name in library}
    wrong = {name: named for name, named in wrong.items() if named}
    assert not wrong, f"library modules that import the paper's experiment: {wrong}"


def test_importing_the_library_imports_nothing_of_the_experiment():
    code = ("import sys, cvae, cvae.fitting, cvae.estimators, cvae.training; "
            "print(sorted(name for name in sys.modules if name.startswith('cvae.paper')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_no_module_imports_itself_back_through_others():
    assert circles(import_graph()) == []


def test_the_reader_sees_function_level_imports_and_circles(tmp_path):
    """The test's own reader: a circle made by an import inside a function, and a library module importing the
    experiment, are both found."""
    package = tmp_path / "cvae"
    (package / "paper").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "paper" / "__init__.py").write_text("")
    (package / "model.py").write_text("def f():\n    from .paper import runs\n")
    (package / "paper" / "runs.py").write_text("from ..model import f\n")
    graph = import_graph(package)
    assert graph["cvae.model"] == {"cvae.paper.runs"}
    assert circles(graph) == [["cvae.model", "cvae.paper.runs"]]


@pytest.mark.parametrize("script", ["train.py", "evaluate.py"])
def test_the_top_level_holds_the_two_scripts_of_the_experiment(script):
    root = PACKAGE.parent
    assert sorted(path.name for path in root.glob("*.py")) == ["evaluate.py", "train.py"]
    assert "cvae.paper.commands" in (root / script).read_text(encoding="utf-8")
