"""streamhtml's modules import one another one way: no circle, not even for the type checker;
and a start imports no more than it needs."""

import ast
import subprocess
import sys
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


# --- what a start imports: make bench's "start to first 200" ---------------------------------


def printed_by(code: str) -> list[str]:
    """What `code` prints, run by a fresh interpreter in the repository."""
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    return done.stdout.split()


def test_glibcs_malloc_tuning_is_found_without_running_ldconfig():
    # ctypes.util.find_library runs `ldconfig -p` in a child process: a few ms of every start.
    assert printed_by(
        "import sys, streamhtml.memory as m; m.limit_arenas(); m.trim(); "
        "print(m._mallopt is not None, m._malloc_trim is not None, 'ctypes.util' in sys.modules)"
    ) == ["True", "True", "False"]


def test_a_worker_starts_without_importing_wsproto_the_first_websocket_does():
    # wsproto and h11 are about 16 ms of a worker's start.
    assert printed_by(
        "import sys, streamhtml.web; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('wsproto', 'h11')))"
    ) == ["[]"]
