"""Connecting to the databases exports read: one connection, credentials kept out of words,
PEM material from a binding written where libpq can read it, and the embedded dataset's lock.

Shared by streamhtml/rows.py (the app) and streamhtml/dataset.py (the fill command).
"""

from __future__ import annotations

import fcntl
import os
import tempfile

from .settings import Source


def redact(text: str, source: Source) -> str:
    """`text` with the source's user and password taken out."""
    for secret in source.secrets():
        text = text.replace(secret, "***")
    return text


def pem_files(source: Source) -> dict[str, str]:
    """Write PEM material from the binding's credentials to private files libpq can read."""
    if not source.pem:
        return {}
    directory = tempfile.mkdtemp(prefix="streamhtml-pg-tls-")
    paths = {}
    for key, text in source.pem:
        path = os.path.join(directory, key + ".pem")
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as pem:
            pem.write(text)
        paths[key] = path
    return paths


def connect_once(source: Source):
    """One psycopg connection to the source, outside any pool (the dataset command)."""
    import psycopg
    from psycopg.conninfo import make_conninfo

    return psycopg.connect(make_conninfo(source.url, **pem_files(source)), autocommit=True)


def take_fill_lock(path: str):
    """The lock one maker of the embedded dataset holds; None when another holds it."""
    lock = open(path + ".lock", "a")  # noqa: SIM115 - held until the process ends
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        return None
    return lock
