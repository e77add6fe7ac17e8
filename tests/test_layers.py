"""The layers run one way: no import cycle among the project's modules, each layer (a folder of
diffraw_jax/, docs/architecture.md) imports only itself and the layers its row of ``ALLOWED``
names, Core imports only jax, flax and numpy of the packages outside the standard library,
evaluation never imports the trainer, inference imports neither the trainer, evaluation nor the
data pipeline.

The import graph is read from the source with ``ast`` (nothing is imported): every
``import`` and ``from ... import`` statement, at module level or inside a function, of
diffraw_jax/, tfds_zrr/, main.py and scripts/. Relative imports are resolved, and
``from pkg import name`` is an edge to ``pkg.name`` when that is a module of the project,
else to ``pkg``. Imports of other packages are kept as edges to their top-level name
(``grain``, ``clu``, ...). The layer rules are checked on paths, not only on direct edges:
evaluation must not reach the trainer through any chain of project imports.
"""
from __future__ import annotations

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("diffraw_jax", "tfds_zrr")
SCRIPTS = ("main.py", "scripts")

TRAINER = "diffraw_jax.training"
EVALUATION = ("diffraw_jax.evaluation",)
INFERENCE = ("diffraw_jax.inference",)
DATA_PIPELINE = ("diffraw_jax.data.input_pipeline", "tfds_zrr", "grain", "tensorflow_datasets", "clu")

# The layers (docs/architecture.md): a folder each; Core is the package's top-level modules and models/.
LAYER_FOLDERS = {"runtime": ("diffraw_jax.runtime",), "loader": ("diffraw_jax.checkpoints",),
                 "data": ("diffraw_jax.data", "tfds_zrr"), "evaluation": EVALUATION,
                 "training": (TRAINER,), "inference": INFERENCE}
# What each layer may import of the project, besides itself (closed under the relation, so a
# check of direct edges is a check of every chain).
ALLOWED = {"runtime": set(), "core": set(), "loader": {"core", "runtime"}, "data": {"core", "runtime"},
           "evaluation": {"core", "runtime", "loader", "data"},
           "training": {"core", "runtime", "loader", "data", "evaluation"},
           "inference": {"core", "runtime", "loader"}}
CORE_PACKAGES = {"jax", "flax", "numpy", "__future__"}  # Core's imports from outside the standard library
MAX_TOP_LEVEL_MODULES = 12


def layer_of(module: str):
    """The layer of a project module of diffraw_jax/ or tfds_zrr/ (None for main.py and scripts)."""
    for layer, prefixes in LAYER_FOLDERS.items():
        if _within(module, prefixes):
            return layer
    return "core" if _within(module, ("diffraw_jax",)) else None


def _module_files(root: str = ROOT) -> dict[str, str]:
    """{module name: file} of the project's modules (a package's ``__init__`` is the package)."""
    files = {}
    for pkg in PACKAGES:
        for d, _, names in os.walk(os.path.join(root, pkg)):
            for n in names:
                if n.endswith(".py"):
                    rel = os.path.relpath(os.path.join(d, n), root)[:-3].split(os.sep)
                    if rel[-1] == "__init__":
                        rel = rel[:-1]
                    files[".".join(rel)] = os.path.join(d, n)
    for entry in SCRIPTS:
        path = os.path.join(root, entry)
        if os.path.isfile(path):
            files[entry[:-3]] = path
        elif os.path.isdir(path):
            for n in sorted(os.listdir(path)):
                if n.endswith(".py"):
                    files[f"{entry}.{n[:-3]}"] = os.path.join(path, n)
    return files


def _within(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def import_graph(root: str = ROOT) -> dict[str, set[str]]:
    """{module: the modules it imports} of the project (see the module docstring)."""
    files = _module_files(root)
    graph: dict[str, set[str]] = {}
    for mod, path in files.items():
        is_package = os.path.basename(path) == "__init__.py"
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), filename=path)
        edges = set()
        for node in ast.walk(tree):  # every statement, function bodies included
            if isinstance(node, ast.Import):
                edges.update(_target(a.name, files) for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = mod.split(".") if is_package else mod.split(".")[:-1]
                    parts = parts[:len(parts) - (node.level - 1)]
                    base = ".".join(parts + ([node.module] if node.module else []))
                else:
                    base = node.module
                for a in node.names:
                    sub = f"{base}.{a.name}"
                    edges.add(sub if sub in files else _target(base, files))
        edges.discard(mod)
        graph[mod] = edges
    return graph


def _target(name: str, files) -> str:
    """The project module ``name`` names (its longest known prefix), or the top-level package."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in files:
            return ".".join(parts[:i])
    return parts[0]


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle ``[a, b, ..., a]`` per strongly connected component with a cycle (Tarjan)."""
    index, low, on_stack, stack, sccs = {}, {}, set(), [], []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for u in sorted(graph.get(v, ())):
            if u not in graph:
                continue
            if u not in index:
                visit(u)
                low[v] = min(low[v], low[u])
            elif u in on_stack:
                low[v] = min(low[v], index[u])
        if low[v] == index[v]:
            comp = []
            while True:
                u = stack.pop()
                on_stack.discard(u)
                comp.append(u)
                if u == v:
                    break
            if len(comp) > 1 or v in graph.get(v, ()):
                sccs.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    cycles = []
    for comp in sccs:
        start, members = comp[0], set(comp)
        cycles.append(path_between(start, lambda m: m == start, graph, within=members, first_step=True))
    return cycles


def path_between(start: str, is_goal, graph, *, within=None, first_step: bool = False):
    """The shortest import chain ``[start, ..., goal]`` (breadth first), or None."""
    prev, frontier, seen = {}, [start], {start} if not first_step else set()
    while frontier:
        nxt = []
        for v in frontier:
            for u in sorted(graph.get(v, ())):
                if within is not None and u not in within:
                    continue
                if u in seen:
                    continue
                seen.add(u)
                prev[u] = v
                if is_goal(u):
                    chain = [u]
                    while chain[-1] != start or len(chain) == 1:
                        chain.append(prev[chain[-1]])
                    return chain[::-1]
                nxt.append(u)
        frontier = nxt
    return None


def layer_violations(graph) -> list[str]:
    """One line per module of a layer that reaches what the layer rules forbid it, with the chain."""
    rules = [(EVALUATION, (TRAINER,), "evaluation imports the trainer"),
             (INFERENCE, (TRAINER,) + EVALUATION + DATA_PIPELINE,
              "inference imports the trainer, evaluation or the data pipeline")]
    out = []
    for layer, forbidden, what in rules:
        for mod in sorted(m for m in graph if _within(m, layer)):
            chain = path_between(mod, lambda m: _within(m, forbidden) and not _within(m, layer), graph)
            if chain:
                out.append(f"{what}: {' -> '.join(chain)}")
    return out


# --------------------------------------------------------------------------- the project


@pytest.fixture(scope="module")
def graph():
    return import_graph()


def test_the_graph_sees_the_known_edges(graph):
    """The walker finds module-level, function-level, relative and ``from pkg import module`` imports."""
    assert "diffraw_jax.training.train" in graph and "main" in graph and "scripts.ablation" in graph
    assert "tfds_zrr" in graph and "diffraw_jax.inference.pipeline" in graph
    assert "diffraw_jax.data.input_pipeline" in graph["diffraw_jax.training.train"]  # inside train_and_evaluate
    assert "diffraw_jax.evaluation.periodic_eval" in graph["diffraw_jax.training.train"]  # inside train_and_evaluate
    assert "diffraw_jax.checkpoints.weights" in graph["diffraw_jax.inference.pipeline"]  # from diffraw_jax import weights
    assert "grain" in graph["diffraw_jax.data.input_pipeline"]


def test_no_import_cycle(graph):
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_layers_run_one_way(graph):
    bad = layer_violations(graph)
    assert not bad, "\n".join(bad)


def upward_imports(graph) -> list:
    """One line per import of a project module from a layer its importer may not use."""
    out = []
    for mod in sorted(graph):
        layer = layer_of(mod)
        if layer is None:
            continue
        for dep in sorted(graph[mod]):
            dep_layer = layer_of(dep) if dep in graph else None
            if dep_layer is not None and dep_layer != layer and dep_layer not in ALLOWED[layer]:
                out.append(f"{mod} ({layer}) imports {dep} ({dep_layer})")
    return out


def test_no_layer_imports_a_higher_layer(graph):
    bad = upward_imports(graph)
    assert not bad, "\n".join(bad)


def test_core_imports_only_jax_flax_numpy(graph):
    import sys

    bad = {m: sorted(d for d in graph[m] if d not in graph and d not in sys.stdlib_module_names
                     and d not in CORE_PACKAGES)
           for m in graph if layer_of(m) == "core"}
    assert not {m: d for m, d in bad.items() if d}, bad


def test_the_package_top_level_is_core_only():
    """At most 12 modules directly under diffraw_jax/ (``__init__`` counted), the rest in layer folders."""
    top = sorted(n for n in os.listdir(os.path.join(ROOT, "diffraw_jax")) if n.endswith(".py"))
    assert len(top) <= MAX_TOP_LEVEL_MODULES, top
    folders = {n for n in os.listdir(os.path.join(ROOT, "diffraw_jax"))
               if os.path.isfile(os.path.join(ROOT, "diffraw_jax", n, "__init__.py"))}
    assert folders == {"models", "runtime", "checkpoints", "data", "evaluation", "training", "inference"}, folders


def test_upward_import_check_names_the_edge():
    g = {"diffraw_jax.checkpoints.weights": {"diffraw_jax.data.input_pipeline", "diffraw_jax.models.factory"},
         "diffraw_jax.data.input_pipeline": {"diffraw_jax.raw"}, "diffraw_jax.models.factory": {"diffraw_jax.dtdm"},
         "diffraw_jax.dtdm": {"diffraw_jax.runtime.logs"}, "diffraw_jax.runtime.logs": set(), "diffraw_jax.raw": set()}
    assert upward_imports(g) == [
        "diffraw_jax.checkpoints.weights (loader) imports diffraw_jax.data.input_pipeline (data)",
        "diffraw_jax.dtdm (core) imports diffraw_jax.runtime.logs (runtime)"]


# --------------------------------------------------------------------------- the checker itself


def test_cycle_finder_names_a_planted_cycle():
    g = {"a": {"b"}, "b": {"c", "numpy"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    cycles = find_cycles(g)
    assert ["a", "b", "c", "a"] in cycles and ["e", "e"] in cycles and len(cycles) == 2
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_layer_check_names_the_offending_chain():
    g = {"diffraw_jax.evaluation.evaluate": {"diffraw_jax.checkpoints.weights"}, "diffraw_jax.checkpoints.weights": {"diffraw_jax.training.train"},
         "diffraw_jax.training.train": {"diffraw_jax.evaluation.periodic_eval"}, "diffraw_jax.evaluation.periodic_eval": set(),
         "diffraw_jax.inference.cli": {"diffraw_jax.inference.pipeline"},
         "diffraw_jax.inference.pipeline": {"grain"}}
    bad = layer_violations(g)
    assert ("evaluation imports the trainer: diffraw_jax.evaluation.evaluate -> diffraw_jax.checkpoints.weights -> "
            "diffraw_jax.training.train") in bad
    assert ("inference imports the trainer, evaluation or the data pipeline: diffraw_jax.inference.cli "
            "-> diffraw_jax.inference.pipeline -> grain") in bad
    assert layer_violations({"diffraw_jax.training.train": {"diffraw_jax.evaluation.evaluate"}, "diffraw_jax.evaluation.evaluate": set()}) == []


def test_walker_resolves_relative_and_function_level_imports(tmp_path):
    pkg = tmp_path / "diffraw_jax"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from . import b\n    from .sub import c as cc\n")
    (pkg / "b.py").write_text("from diffraw_jax.sub.c import thing\n")
    (pkg / "sub" / "__init__.py").write_text("from .. import a\n")
    (pkg / "sub" / "c.py").write_text("import diffraw_jax.a\nimport grain.python\n")
    g = import_graph(str(tmp_path))
    assert g["diffraw_jax.a"] == {"diffraw_jax.b", "diffraw_jax.sub.c"}
    assert g["diffraw_jax.b"] == {"diffraw_jax.sub.c"}
    assert g["diffraw_jax.sub"] == {"diffraw_jax.a"}
    assert g["diffraw_jax.sub.c"] == {"diffraw_jax.a", "grain"}
    assert find_cycles(g) == [["diffraw_jax.a", "diffraw_jax.sub.c", "diffraw_jax.a"]]  # the shortest one
