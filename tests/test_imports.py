"""The import graph runs one way: cli -> jobs/batch -> methods -> core -> models (read from the source, lazy
imports inside functions included)."""

import ast
from pathlib import Path

import pytest

VGEN = Path(__file__).resolve().parents[1] / "vgen"


def _module(path: Path) -> str:
    parts = path.relative_to(VGEN.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, top_level_only: bool = False) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith("vgen"):
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("vgen"))
    return out


GRAPH = {_module(p): _imports(p) for p in VGEN.rglob("*.py")}
KNOWN: set[tuple[str, str]] = set()


@pytest.mark.parametrize("package,forbidden", [
    ("vgen.models", ("vgen.core", "vgen.methods", "vgen.jobs", "vgen.batch", "vgen.cli")),
    ("vgen.core", ("vgen.methods", "vgen.jobs", "vgen.batch", "vgen.cli")),
    ("vgen.methods", ("vgen.jobs", "vgen.batch", "vgen.cli")),
])
def test_layers_import_only_downwards(package, forbidden):
    bad = sorted(
        (module, target)
        for module, targets in GRAPH.items() if module == package or module.startswith(package + ".")
        for target in targets if target.startswith(forbidden) and (module, target.rsplit(".", 1)[0]) not in KNOWN
        and (module, target) not in KNOWN
    )
    assert bad == []


def test_no_cycle_among_module_level_imports():
    modules = {_module(p): p for p in VGEN.rglob("*.py")}
    edges = {m: {t for t in _imports(p, top_level_only=True) if t in modules and t != m} for m, p in modules.items()}
    state: dict[str, int] = {}

    def visit(m, stack):
        state[m] = 1
        for t in edges[m]:
            if state.get(t) == 1:
                raise AssertionError(" -> ".join(stack[stack.index(t):] + [t]) if t in stack else f"{m} -> {t}")
            if t not in state:
                visit(t, stack + [t])
        state[m] = 2

    for m in sorted(modules):
        if m not in state:
            visit(m, [m])


METHOD_CONFIGS = sorted(m for m in GRAPH if m.startswith("vgen.methods.") and m.endswith(".config"))
CONFIG_MAY_IMPORT = ("vgen.errors", "vgen.config_io")


def test_vgen_config_imports_of_methods_are_their_config_sections_only():
    """vgen.config builds JobConfig from each method's section: it may import exactly vgen.methods.<name>.config
    (and the torch-free registry, to name a method), nothing else of a method."""
    methods = sorted(t for t in GRAPH["vgen.config"] if t in GRAPH and t.startswith("vgen.methods."))
    assert methods and set(methods) <= set(METHOD_CONFIGS)


@pytest.mark.parametrize("module", METHOD_CONFIGS)
def test_method_config_sections_import_only_errors_and_config_io(module):
    """A method's config section sits below vgen.config (which imports it): never vgen.config itself, no torch."""
    import sys

    assert {t for t in GRAPH[module] if t in GRAPH} <= set(CONFIG_MAY_IMPORT)
    tree = ast.parse((VGEN.parent / (module.replace(".", "/") + ".py")).read_text())
    top = {n.split(".")[0] for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
           for n in ([a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""])}
    assert top <= set(sys.stdlib_module_names) | {"omegaconf", "vgen", "__future__"}
