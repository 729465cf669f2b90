"""How a request ended: every request is logged and counted with exactly one of these."""

COMPLETE = "complete"
CLIENT_GONE = "client_gone"
SHUTDOWN = "cut_by_shutdown"
STALLED = "stalled"
DEADLINE = "deadline"
ERROR = "error"
# WebSockets only (streamhtml/websockets.py): closed with 1009, or with wsproto's code for a
# protocol error (1002, 1007).
TOO_BIG = "too_big"
PROTOCOL_ERROR = "protocol_error"
