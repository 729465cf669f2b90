"""How a request ended: every request is logged and counted with exactly one of these."""

COMPLETE = "complete"
CLIENT_GONE = "client_gone"
SHUTDOWN = "cut_by_shutdown"
STALLED = "stalled"
DEADLINE = "deadline"
ERROR = "error"
