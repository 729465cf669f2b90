"""gunicorn's settings, every one from the environment (declared in streamhtml/settings.py).

The Procfile and `make run` both start `gunicorn --config gunicorn.conf.py app:app`; gunicorn
has put its working directory (the app's) on sys.path before it runs this file.
docs/operations.md lists each variable with its default.
"""

import os
import shutil
import signal
import sys
import tempfile

# prometheus_client picks multiprocess mode from this variable when it is first imported, so it
# is set before anything imports it; workers inherit it. The directory is the one thing the
# app writes at run time, a fresh one in the temp dir per server start, removed on exit.
# SIGHUP runs this file again in the same master: the second variable says the directory is
# still the one made here, so the reloaded on_exit removes it too. One the operator gave is
# never removed.
_MADE_HERE = "STREAMHTML_MADE_METRICS_DIR"
if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="streamhtml-metrics-")
    os.environ[_MADE_HERE] = os.environ["PROMETHEUS_MULTIPROC_DIR"]
_metrics_dir_made_here = os.environ.get(_MADE_HERE)
if _metrics_dir_made_here != os.environ["PROMETHEUS_MULTIPROC_DIR"]:
    _metrics_dir_made_here = None

from streamhtml import capacity, clients, logs, memory, metrics  # noqa: E402
from streamhtml.settings import SettingsError, load_settings  # noqa: E402

try:
    _settings = load_settings()
except SettingsError as error:
    # on_exit never runs for a start refused here: the metrics directory goes now.
    if _metrics_dir_made_here:
        shutil.rmtree(_metrics_dir_made_here, ignore_errors=True)
    # SystemExit passes through gunicorn's config loader: one clear line, no traceback.
    sys.exit(f"streamhtml: invalid setting: {error}")
_server = _settings.server

bind = [f"0.0.0.0:{_server.port}"]
workers = _server.workers

# Why gthread, and what StreamingWorker changes in it: docs/operations.md#the-worker.
worker_class = "streamhtml.worker.StreamingWorker" if _server.worker_class == "gthread" else "sync"
# gunicorn would quietly turn a sync worker with threads > 1 into gthread.
threads = _server.threads if _server.worker_class == "gthread" else 1
worker_connections = _server.worker_connections

timeout = _server.timeout_s
# Cloud Foundry sends SIGKILL 10 s after SIGTERM: in-flight streams get less than that.
graceful_timeout = _server.graceful_timeout_s
# gorouter keeps idle connections to the app 90 s: this outlasts it, so gorouter always closes
# an idle connection first and never sends a request down one gunicorn has just closed.
keepalive = _server.keepalive_s
backlog = _server.backlog

# One line per request, in one shape with gunicorn's own records (streamhtml/logs.py).
# Cloud Foundry's buildpack sets GUNICORN_CMD_ARGS="--access-logfile -": gunicorn applies it,
# then logconfig_dict replaces its handlers, and the request line is written by the app.
loglevel = _server.log_level
errorlog = "-"
accesslog = "-"
logger_class = logs.RequestLogger
logconfig_dict = logs.logconfig_dict(
    _server.log_format, _server.log_level, worker_logs_errors=_server.worker_class == "gthread"
)
capture_output = False

# gunicorn 27's control socket is a file under $HOME that two instances on one host would share;
# nothing here uses it, and the app writes no files at run time.
control_socket_disable = True

# Fewer malloc arenas, so memory freed by many threads goes back (streamhtml/memory.py).
memory.limit_arenas()


# Streams counted across workers (streamhtml/capacity.py): the master gives each worker a slot
# of a shared page before forking it, and clears the slot when the worker exits, however it died.
def pre_fork(server, worker):
    capacity.assign_slot(worker)
    clients.clear_row(worker.streamhtml_slot)  # the per-client counts, likewise


def post_fork(server, worker):
    capacity.attach_worker(worker)


def child_exit(server, worker):
    slot = getattr(worker, "streamhtml_slot", None)
    capacity.release_slot(worker)
    if slot is not None:
        clients.clear_row(slot)
    metrics.mark_worker_dead(worker.pid)


def on_exit(server):
    if _metrics_dir_made_here:
        shutil.rmtree(_metrics_dir_made_here, ignore_errors=True)


# Streams still running this long after SIGTERM are cut, so the worker exits before the
# arbiter's SIGKILL at graceful_timeout (itself under Cloud Foundry's 10 s).
SHUTDOWN_MARGIN_S = 1.0


def post_worker_init(worker):
    gunicorn_on_term = signal.getsignal(signal.SIGTERM)

    def on_term(signum, frame):
        capacity.begin_shutdown(max(0.0, graceful_timeout - SHUTDOWN_MARGIN_S))
        gunicorn_on_term(signum, frame)

    signal.signal(signal.SIGTERM, on_term)
    signal.siginterrupt(signal.SIGTERM, False)  # as gunicorn had it: restart interrupted calls
