"""gunicorn's settings, every one from the environment (read by streamhtml.settings).

The Procfile and `make run` both start `gunicorn --config gunicorn.conf.py app:app`.
The README lists each variable with its default.
"""

import os
import shutil
import signal
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# prometheus_client picks multiprocess mode from this variable when it is first imported, so it
# is set before anything imports it; workers inherit it. The directory is the one thing the
# app writes at run time, a fresh one in the temp dir per server start, removed on exit.
if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="streamhtml-metrics-")
    _metrics_dir_made_here = os.environ["PROMETHEUS_MULTIPROC_DIR"]
else:
    _metrics_dir_made_here = None

from streamhtml import live, logs, metrics  # noqa: E402
from streamhtml.settings import SettingsError, load_server_settings, load_settings  # noqa: E402

try:
    _server = load_server_settings()
    load_settings()  # the app's limits too: a bad one stops the start here, with its name
except SettingsError as error:
    # SystemExit passes through gunicorn's config loader: one clear line, no traceback.
    sys.exit(f"streamhtml: invalid setting: {error}")

bind = [f"0.0.0.0:{_server.port}"]
workers = _server.workers

# gthread, chosen by measurement (bench/SWEEP.md, bench/RESULTS.md): each worker's main thread
# keeps telling the arbiter it is alive while request threads stream, so a stream may outlive
# `timeout`; and one worker serves `threads` streams at once, so slow clients do not each hold
# a process. The sync worker does neither: it is killed mid-stream after `timeout`, serves one
# client at a time, and measured 0.74x the minimal app on the sample's ab test and a 3.6 s
# /health p99 under 500 streams, against 1.08x and 21 ms for this worker.
# "gthread" is gunicorn's gthread worker with one change (streamhtml/worker.py): a stream
# that does not pause has its chunks sent in 64 KiB writes, framed exactly as before.
worker_class = "streamhtml.worker.StreamingWorker" if _server.worker_class == "gthread" else "sync"
# gunicorn would quietly turn a sync worker with threads > 1 into gthread.
threads = _server.threads if _server.worker_class == "gthread" else 1
# Enough connection slots for every thread plus idle keep-alive connections.
worker_connections = max(1000, 2 * _server.threads)

timeout = _server.timeout_s
# Cloud Foundry sends SIGKILL 10 s after SIGTERM: in-flight streams get less than that.
graceful_timeout = _server.graceful_timeout_s
# Longer than the 60 s idle timeout of common load balancers, so the proxy closes an idle
# connection first and never sends a request down one that gunicorn has just closed.
keepalive = _server.keepalive_s
backlog = _server.backlog

# One line per request, in one shape with gunicorn's own records (streamhtml/logs.py).
# Cloud Foundry's buildpack sets GUNICORN_CMD_ARGS="--access-logfile -": gunicorn applies it,
# then logconfig_dict replaces its handlers, so the lines keep this shape and are not doubled.
loglevel = _server.log_level
errorlog = "-"
accesslog = "-"
logger_class = logs.RequestLogger
logconfig_dict = logs.logconfig_dict(_server.log_format, _server.log_level)
capture_output = False

# gunicorn 27's control socket is a file under $HOME that two instances on one host would share;
# nothing here uses it, and the app writes no files at run time.
control_socket_disable = True


# Streams counted across workers (streamhtml/live.py): the master gives each worker a slot of
# a shared page before forking it, and clears the slot when the worker exits, however it died.
def pre_fork(server, worker):
    live.assign_slot(worker)


def post_fork(server, worker):
    live.attach_worker(worker)


def child_exit(server, worker):
    live.release_slot(worker)
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
        live.begin_shutdown(max(0.0, graceful_timeout - SHUTDOWN_MARGIN_S))
        gunicorn_on_term(signum, frame)

    signal.signal(signal.SIGTERM, on_term)
    signal.siginterrupt(signal.SIGTERM, False)  # as gunicorn had it: restart interrupted calls
