"""streamhtml's modules import one another one way: no circle, not even for the type checker."""

import ast
from graphlib import CycleError, TopologicalSorter

from support import REPO

PACKAGE = REPO / "streamhtml"


def imported_modules(path) -> set[str]:
    """The streamhtml modules `path` imports, wherever the import stands (TYPE_CHECKING too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("streamhtml."):
            found.add(node.module.split(".")[1])
    return found


def test_no_module_of_streamhtml_imports_itself_through_others():
    graph = {path.stem: imported_modules(path) for path in PACKAGE.glob("*.py")}
    assert graph["stream"] == {"generators", "outcomes"}, graph["stream"]
    try:
        tuple(TopologicalSorter(graph).static_order())
    except CycleError as circle:
        raise AssertionError(f"an import circle: {' -> '.join(circle.args[1])}") from None
