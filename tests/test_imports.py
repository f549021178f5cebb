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
KNOWN = {("vgen.methods.streaming.refine", "vgen.jobs")}  # refine writes its own sidecar; moves with issue 32's step 5


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


def _is_method_config(target: str) -> bool:
    """vgen.methods.<name>.config or one of its names."""
    parts = target.split(".")
    return len(parts) >= 4 and parts[:2] == ["vgen", "methods"] and parts[3] == "config"


def test_vgen_config_reaches_into_a_method_package_only_for_its_config_section():
    into_methods = {t for t in GRAPH["vgen.config"] if t.startswith("vgen.methods.")}
    registry = {"vgen.methods.get_method"}  # the lazy registry lookup (vgen.methods itself is torch-free)
    assert sorted(t for t in into_methods - registry if not _is_method_config(t)) == []


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if _is_method_config(m)))
def test_a_method_config_module_imports_only_errors_and_config_io(module):
    """Below vgen.config (which imports it): no cycle back, and torch-free."""
    imported = {t.split(".")[0] + "." + t.split(".")[1] for t in GRAPH[module]}
    assert imported <= {"vgen.errors", "vgen.config_io"}
    tree = ast.parse((VGEN.parent / (module.replace(".", "/") + ".py")).read_text())
    roots = {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    roots |= {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert "torch" not in roots and "numpy" not in roots
