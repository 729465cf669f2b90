"""glibc's malloc, told to hand memory back to the system once many threads are done with it.

glibc gives threads their own malloc arenas (up to 8 per core) and returns little of a freed
arena to the system, so a burst of hundreds of streaming threads would leave its peak RSS
behind. Measured in docs/operations.md#memory: two arenas, and a trim when the worker has gone
quiet, bring RSS back to where it started.
"""

import ctypes
from typing import Any

M_ARENA_MAX = -8  # mallopt() parameter, from glibc's malloc.h
ARENAS = 2

_mallopt: Any
_malloc_trim: Any
try:
    # The process's own symbols, libc's among them: ctypes.util.find_library would run
    # `ldconfig -p` in a child process on every start (a few ms of the master's).
    _libc = ctypes.CDLL(None)
    _mallopt = _libc.mallopt
    _malloc_trim = _libc.malloc_trim
except (OSError, AttributeError):  # not glibc: nothing to tune
    _mallopt = _malloc_trim = None


def limit_arenas(arenas: int = ARENAS) -> None:
    """In the master, before it forks: every worker then shares `arenas` arenas."""
    if _mallopt is not None:
        _mallopt(M_ARENA_MAX, arenas)


def trim() -> None:
    """Return the free memory at the top of every arena to the system."""
    if _malloc_trim is not None:
        _malloc_trim(0)
