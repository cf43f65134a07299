"""What imports what: the rules of STYLE.md's "What imports what", and no import cycles.

Every module under ``yolo_prune/`` is parsed with :mod:`ast` (nothing is imported or run). Every
import statement counts, at module level and inside functions alike: an import moved into a
function still ties the two modules together, it only hides the tie from a reader. Relative
imports are resolved; ``from pkg import name`` counts as importing the module ``pkg.name`` when
there is one, else ``pkg`` itself.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

import yolo_prune

PACKAGE = Path(yolo_prune.__file__).resolve().parent


@dataclass(frozen=True)
class Import:
    """One import statement of one module, resolved to a yolo_prune module."""

    source: str  # the importing module, e.g. yolo_prune.prune.admm
    target: str  # the imported module, e.g. yolo_prune.prune.projections
    path: Path  # the importing file
    line: int  # line of the statement
    text: str  # the statement as written (one line)

    def __str__(self) -> str:
        return f"{self.path.relative_to(PACKAGE.parent)}:{self.line}: {self.text}"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _known(name: str) -> str | None:
    """``name`` or its longest prefix that is a yolo_prune module; None outside yolo_prune."""
    modules = _modules()
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def _targets(node: ast.Import | ast.ImportFrom, source: str, path: Path) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:  # relative: from the package holding ``source``
        package = source.split(".") if path.name == "__init__.py" else source.split(".")[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join([*package, base] if base else package)
    return [f"{base}.{alias.name}" if f"{base}.{alias.name}" in _modules() else base
            for alias in node.names]  # fmt: skip


@cache
def _imports() -> tuple[Import, ...]:
    found = []
    for source, path in _modules().items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):  # every level: module, class and function bodies
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            text = " ".join(ast.unparse(node).split())
            targets = {_known(name) for name in _targets(node, source, path)}
            for target in sorted(targets - {None, source}):
                found.append(Import(source, target, path, node.lineno, text))
    return tuple(found)


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_the_scan_resolves_every_kind_of_import():
    source = """
from . import cfg
from .. import errors
from .graph import build_graph
import yolo_prune.eval.detection as detection
from yolo_prune.prune import structured, build_pruner
import numpy
def f():
    from yolo_prune.data.coco import load_detection_dataset
"""
    module, path = "yolo_prune.darknet.model", PACKAGE / "darknet" / "model.py"
    nodes = [n for n in ast.walk(ast.parse(source)) if isinstance(n, (ast.Import, ast.ImportFrom))]
    found = [_known(t) for n in nodes for t in _targets(n, module, path)]
    assert found == [
        "yolo_prune.darknet.cfg",
        "yolo_prune.errors",
        "yolo_prune.darknet.graph",
        "yolo_prune.eval.detection",
        "yolo_prune.prune.structured",  # a submodule named in `from package import`
        "yolo_prune.prune",  # a name defined in the package's __init__
        None,  # not ours
        "yolo_prune.data.coco",  # inside a function
    ]
    # and on the real tree: a function-level import is seen, with file and line
    lazy = [i for i in _imports() if i.source == "yolo_prune.runtime.select"
            and i.target == "yolo_prune.detect.detector"]  # fmt: skip
    assert lazy and str(lazy[0]).startswith("yolo_prune/runtime/select.py:")


# (importers, forbidden, why): importers "library" means every module outside yolo_prune.cli.
RULES = [
    ("library", "yolo_prune.cli", "cli/ imports the library; nothing in the library imports cli/"),
    ("yolo_prune.prune", "yolo_prune.darknet",
     "prune/ never imports darknet/: the engine learns about a model only through optional "
     "methods on it"),
    ("yolo_prune.engine", "yolo_prune.prune",
     "engine/ never imports prune/: pruning reaches the loop as hooks the caller passes in"),
    ("yolo_prune.darknet", "yolo_prune.prune", "darknet/ depends on neither prune/ nor engine/"),
    ("yolo_prune.darknet", "yolo_prune.engine", "darknet/ depends on neither prune/ nor engine/"),
    ("yolo_prune.eval", "yolo_prune.prune", "eval/ does not care how a model was pruned"),
    # Not in STYLE.md, kept since the detect <-> eval cycle was broken: eval/ evaluates detectors
    # (it imports detect/), so detect/ (training included) takes validation as a callback.
    ("yolo_prune.detect", "yolo_prune.eval",
     "eval/ sits above detect/; training gets its validation from the caller (validate=)"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("importers", "forbidden", "why"), RULES, ids=[f"{a}-not-{b}" for a, b, _ in RULES]
)
def test_what_imports_what(importers, forbidden, why):
    def is_importer(module: str) -> bool:
        if importers == "library":
            return not _within(module, "yolo_prune.cli")
        return _within(module, importers)

    bad = [i for i in _imports() if is_importer(i.source) and _within(i.target, forbidden)]
    assert not bad, f"{why}; found:\n" + "\n".join(f"  {i}" for i in bad)


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in _modules()}
    for i in _imports():
        graph[i.source].add(i.target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in sorted(graph):
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
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(frozenset(component))
    return found


def _describe(component: frozenset[str]) -> str:
    return "\n".join(
        f"  {i}" for i in _imports() if i.source in component and i.target in component
    )


# Cycles that exist and are out of the scope of the change that added this test; each is hidden
# in a function today. Fix one by moving the shared piece down a layer, then delete its entry.
KNOWN_CYCLES = {
    # Darknet's shrink / refit_pruned_ / fold_zero_channels_ methods call into surgery.py and
    # reconstruct.py, which import the Darknet class (function-level imports in model.py).
    frozenset({"yolo_prune.darknet.model", "yolo_prune.darknet.reconstruct",
               "yolo_prune.darknet.surgery"}),
    # Detector(runtime=...) builds a runtime (function-level import in detector.py); the
    # runtime selector prepares the model with detect.detector.prepare_for_inference.
    frozenset({"yolo_prune.detect.detector", "yolo_prune.runtime", "yolo_prune.runtime.select"}),
}  # fmt: skip


def test_no_import_cycle_among_modules():
    cycles = set(_cycles(_graph()))
    new = [c for c in cycles if c not in KNOWN_CYCLES]
    assert not new, "import cycles (move the shared piece down a layer):\n" + "\n".join(
        f"{sorted(c)}:\n{_describe(c)}" for c in new
    )
    gone = [sorted(c) for c in KNOWN_CYCLES if c not in cycles]
    assert not gone, f"no longer (exactly) a cycle; update KNOWN_CYCLES: {gone}"


def _reaches(graph: dict[str, set[str]], start: str, goal: str) -> bool:
    seen, todo = {start}, [start]
    while todo:
        for nxt in graph[todo.pop()]:
            if nxt == goal:
                return True
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return False


# Pairs whose cycle was hidden in a function-level import until the shared piece moved down a
# layer (data.ground_truth, prune.projections.project_channel_groups) or, for training and
# evaluation, until training took validation as a callback (see also the detect-not-eval rule).
FIXED_PAIRS = [
    ("yolo_prune.prune.projections", "yolo_prune.prune.structured"),
    ("yolo_prune.data.coco", "yolo_prune.data.yolo_txt"),
    ("yolo_prune.detect.train", "yolo_prune.eval.detection"),
]


@pytest.mark.parametrize(
    ("a", "b"), FIXED_PAIRS, ids=[b.rpartition(".")[2] for _, b in FIXED_PAIRS]
)
def test_cycles_once_hidden_in_functions_stay_broken(a, b):
    graph = _graph()
    assert a in graph and b in graph
    ab, ba = _reaches(graph, a, b), _reaches(graph, b, a)
    assert not (ab and ba), f"{a} and {b} import each other again:\n" + "\n".join(
        f"  {i}" for i in _imports() if {i.source, i.target} <= {a, b}
    )
