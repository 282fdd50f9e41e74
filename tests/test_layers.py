"""The import structure README's "Code layout" draws: each module imports only from its own layer
or below, and no two modules import each other, directly or round a circle (imports inside
functions count too: they are dependencies all the same)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "ganforge"

# Layer of each module, by the longest matching prefix (README, "Code layout").
LAYERS = {
    "ganforge.errors": 1, "ganforge.progress": 1, "ganforge.version": 1,
    "ganforge.data": 2, "ganforge.snapshots": 2, "ganforge.hardware": 2, "ganforge.losses": 2, "ganforge.assets": 2,
    "ganforge.augment": 2, "ganforge.archive": 2, "ganforge.hostsync": 2, "ganforge.conv": 2,
    "ganforge.models": 3,
    "ganforge.sampling": 4,
    "ganforge.metrics": 5, "ganforge.inference": 5, "ganforge.explore": 5,
    "ganforge.training": 6,
    "ganforge.cli": 7, "ganforge.studio": 7, "ganforge.__main__": 7, "ganforge.api": 7, "ganforge.compare": 7,
    "ganforge": 7,  # the package itself: its public names come from ganforge.api (imported lazily)
}


def layer(module: str) -> int:
    return LAYERS[max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """ganforge modules a file imports, anywhere in it (`from ganforge.x import y` counts x.y when it is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("ganforge")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ganforge"):
            found.add(node.module)
            for a in node.names:
                candidate = f"{node.module}.{a.name}"
                if (PACKAGE.parent / (candidate.replace(".", "/") + ".py")).exists():
                    found.add(candidate)
    return found


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports(p) - {module_name(p)} for p in PACKAGE.rglob("*.py")}


def test_no_module_imports_from_a_higher_layer():
    upward = [f"{m} (layer {layer(m)}) imports {i} (layer {layer(i)})"
              for m, targets in graph().items() for i in targets if layer(i) > layer(m)]
    assert not upward, "\n".join(upward)


def test_no_import_circles():
    edges = graph()
    # A package's __init__ is where its submodules are reached from; an edge into it means "the package".
    state, circles = {}, []

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for target in sorted(edges.get(node, ())):
            if target == "ganforge" or node.startswith(target + "."):
                continue  # a module of a package naming its own package
            if state.get(target) == "open":
                circles.append(" -> ".join(path[path.index(target):] + [target]) if target in path else target)
            elif target not in state:
                visit(target, path + [target])
        state[node] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert not circles, "\n".join(circles)
