"""A throwaway PostgreSQL: Debian's server binaries, a fresh cluster in a temporary directory,
served on a free loopback port by an unprivileged user, and removed afterwards.

Used by the session fixture `postgres` (tests/conftest.py) and by benches: it imports only the
standard library and psycopg (a runtime dependency), never pytest or the other test helpers.

    server = Postgres().start()      # initdb, start, role and database `streamhtml`
    psycopg.connect(server.url)      # as the app: a non-superuser with a password, over TCP
    server.admin_query("SELECT pid FROM pg_stat_activity")
    server.stop()                    # the server stopped and its directory gone
"""

import atexit
import contextlib
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
from psycopg import sql

# Where Debian's postgresql-NN packages put the server binaries (not on PATH).
DEBIAN_ROOT = Path("/usr/lib/postgresql")
APP_ROLE = APP_DATABASE = "streamhtml"
ADMIN_ROLE = "postgres"
# The owner of the cluster's files when the tests run as root: postgres refuses to run as root.
SYSTEM_USER = "postgres"
START_TIMEOUT_S = 30.0
# Durability is worthless for a cluster thrown away after the run; start-up and writes are
# faster without it. The unix socket lives in the private directory, TCP only on loopback.
SERVER_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "'32MB'",
    "max_connections": "100",
    "max_wal_size": "'256MB'",
    "log_min_messages": "warning",
    "log_line_prefix": "'%m [%p] %u@%d '",
}


def find_bindir() -> Path | None:
    """The directory of the newest PostgreSQL server binaries: Debian's
    /usr/lib/postgresql/NN/bin, else one holding initdb and pg_ctl on PATH, else None."""
    versions = []
    for initdb in DEBIAN_ROOT.glob("*/bin/initdb"):
        if re.fullmatch(r"\d+", initdb.parent.parent.name) and os.access(initdb, os.X_OK):
            versions.append((int(initdb.parent.parent.name), initdb.parent))
    if versions:
        return max(versions)[1]
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl", path=str(Path(on_path).parent)):
        return Path(on_path).parent
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def exited(pid: int, timeout_s: float = 0.0) -> bool:
    """Whether process `pid` has exited (or is a zombie, which only its parent can reap; pg_ctl
    leaves the server to init), waiting up to `timeout_s` for it."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state in ("Z", "X"):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)  # a poll interval under the deadline above


class PostgresError(RuntimeError):
    """A step of the cluster's life failed; the message carries the server's log tail."""


class Postgres:
    """One PostgreSQL cluster of its own: superuser `postgres` for the tests, and the role and
    database `streamhtml` (not a superuser) for the app, both with random passwords."""

    def __init__(self, bindir: Path | None = None):
        found = bindir or find_bindir()
        if found is None:
            raise PostgresError(
                f"no PostgreSQL server binaries ({DEBIAN_ROOT}/*/bin/initdb); `make tools` "
                "installs Debian's postgresql"
            )
        self.bindir = found
        self.port = 0
        self.directory: Path | None = None
        self.app_password = secrets.token_urlsafe(18)
        self.admin_password = secrets.token_urlsafe(18)
        # postgres refuses to run as root: as root, the files and processes are the system
        # user's; otherwise the current user's.
        self.run_as = SYSTEM_USER if os.geteuid() == 0 else None
        self.start_s = 0.0  # how long start() took, initdb included

    # --- where it is ---

    @property
    def data(self) -> Path:
        assert self.directory, "not started"
        return self.directory / "data"

    @property
    def log_path(self) -> Path:
        assert self.directory, "not started"
        return self.directory / "postgres.log"

    @property
    def url(self) -> str:
        """The app's URL: role and database `streamhtml`, with its password, over TCP."""
        return self._url(APP_ROLE, self.app_password, APP_DATABASE)

    @property
    def admin_url(self) -> str:
        """The superuser's URL, to the app's database (pg_stat_activity is cluster-wide)."""
        return self._url(ADMIN_ROLE, self.admin_password, APP_DATABASE)

    def _url(self, role: str, password: str, database: str) -> str:
        return f"postgresql://{role}:{password}@127.0.0.1:{self.port}/{database}"

    # --- life ---

    def start(self) -> "Postgres":
        """Create the cluster, start it, and create the app's role and database."""
        started = time.monotonic()
        self.directory = Path(tempfile.mkdtemp(prefix="streamhtml-pg-"))
        atexit.register(self.stop)  # if the caller never gets to stop(): no cluster left over
        try:
            if self.run_as:
                user = pwd.getpwnam(self.run_as)
                os.chown(self.directory, user.pw_uid, user.pw_gid)
            self._initdb()
            self._configure()
            self._first_start()
            self.admin_query(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(APP_ROLE), sql.Literal(self.app_password)
                ),
                database="postgres",
            )
            self.admin_query(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(APP_DATABASE), sql.Identifier(APP_ROLE)
                ),
                database="postgres",
            )
        except BaseException:
            self.stop()
            raise
        self.start_s = time.monotonic() - started
        return self

    def _initdb(self) -> None:
        password_file = self.directory / "admin-password"
        password_file.write_text(self.admin_password + "\n")
        if self.run_as:
            shutil.chown(password_file, self.run_as)
        try:
            self._run(
                "initdb",
                f"--pgdata={self.data}",
                f"--username={ADMIN_ROLE}",
                f"--pwfile={password_file}",
                # The socket is in a directory only the cluster's user can enter; every TCP
                # connection, loopback included, needs its password.
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
                "--no-instructions",
            )
        finally:
            password_file.unlink()

    def _configure(self) -> None:
        settings = {
            **SERVER_SETTINGS,
            "unix_socket_directories": f"'{self.directory}'",
        }
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write("\n# tests/pg_support.py\n")
            conf.writelines(f"{name} = {value}\n" for name, value in settings.items())

    def _first_start(self, attempts: int = 3) -> None:
        # free_port() only finds a port free a moment ago: another process may take it first.
        for attempt in range(attempts):
            self.port = free_port()
            try:
                self.start_server()
                return
            except PostgresError as error:
                if "could not bind" not in str(error) or attempt == attempts - 1:
                    raise

    def start_server(self) -> None:
        """Start the stopped server on its port; return once it accepts the superuser."""
        self._run(
            "pg_ctl",
            "start",
            f"--pgdata={self.data}",
            f"--log={self.log_path}",
            f"--options=-p {self.port}",
            "--wait",
            f"--timeout={int(START_TIMEOUT_S)}",
        )
        self.wait_ready()

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with psycopg.connect(self.admin_url, dbname="postgres", connect_timeout=2):
                    return
            except psycopg.OperationalError as error:
                if time.monotonic() > deadline:
                    raise PostgresError(
                        f"not accepting connections: {error}\n{self.log_tail()}"
                    ) from error
            time.sleep(0.02)  # a poll interval under the deadline above, not a wait for an event

    def stop_server(self, mode: str = "fast") -> None:
        """Stop the server, keeping its data: `fast` rolls back and disconnects every session,
        `immediate` kills them as a crash would."""
        self._run("pg_ctl", "stop", f"--pgdata={self.data}", f"--mode={mode}", "--wait")

    def restart(self, mode: str = "fast") -> None:
        self.stop_server(mode)
        self.start_server()

    def running(self) -> bool:
        if not self.directory or not self.data.is_dir():
            return False
        status = self._run("pg_ctl", "status", f"--pgdata={self.data}", check=False)
        return status.returncode == 0

    def stop(self) -> None:
        """Stop the server however it must be stopped, wait until its postmaster has exited,
        and remove its directory. Idempotent."""
        atexit.unregister(self.stop)
        if not self.directory:
            return
        try:
            pid = self.postmaster_pid()
            if pid is not None:
                with contextlib.suppress(PostgresError):
                    self.stop_server("immediate")
                if not exited(pid, timeout_s=10):
                    # Its backends exit by themselves once the postmaster is gone.
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                    exited(pid, timeout_s=5)
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)
            if self.directory.exists():
                raise PostgresError(f"{self.directory} is still there after stop()")
            self.directory = None

    def postmaster_pid(self) -> int | None:
        """The running server's process id, from its postmaster.pid, or None."""
        try:
            pid = int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError, AssertionError):
            return None
        return None if exited(pid) else pid

    # --- queries, as the superuser ---

    def admin_query(self, query, params=None, *, database: str = APP_DATABASE) -> list[tuple]:
        """Run `query` (a string or a psycopg.sql object) as the superuser, in autocommit, and
        return its rows ([] when it returns none)."""
        with psycopg.connect(self.admin_url, dbname=database, autocommit=True) as conn:
            cursor = conn.execute(query, params)
            return cursor.fetchall() if cursor.description else []

    def app_backends(self) -> list[dict]:
        """The app role's sessions in pg_stat_activity: pid, state, query, wait_event."""
        rows = self.admin_query(
            "SELECT pid, state, query, wait_event FROM pg_stat_activity WHERE usename = %s",
            (APP_ROLE,),
        )
        return [dict(zip(("pid", "state", "query", "wait_event"), row)) for row in rows]

    def terminate_app_backends(self) -> int:
        """pg_terminate_backend() on every session of the app role; how many there were."""
        rows = self.admin_query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
            (APP_ROLE,),
        )
        return len(rows)

    # --- helpers ---

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except (OSError, AssertionError):
            return "(no server log)"

    def _run(self, program: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        argv = [str(self.bindir / program), *args]
        if self.run_as:
            argv = ["runuser", "-u", self.run_as, "--", *argv]
        # Nothing of the caller's libpq environment (PGHOST, PGDATA, ...) takes part.
        env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
        # A session of its own (the server's too), so a Ctrl-C at the terminal reaches only
        # the tests, whose teardown then stops the server.
        done = subprocess.run(
            argv,
            cwd=self.directory or "/",
            env={**env, "LC_ALL": "C"},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            start_new_session=True,
        )
        if check and done.returncode != 0:
            raise PostgresError(
                f"{program} {' '.join(args[:2])} exited {done.returncode}:\n"
                f"{done.stdout}{done.stderr}\n{self.log_tail()}"
            )
        return done
