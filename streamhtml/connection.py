"""What a stream can learn of its client while it waits between blocks."""

import select
import socket
import time

from .observe import CLIENT_GONE

# POLLRDHUP reports a peer's FIN even when the kernel has no data to read (Linux only).
_HANGUP = getattr(select, "POLLRDHUP", 0) | select.POLLHUP | select.POLLERR
_WATCH = select.POLLIN | _HANGUP


class ClientWatcher:
    """Sleeps between blocks, waking at once if the client hangs up.

    Without it a stream with sleep_ms=30000 would learn of a hang-up only at its next write,
    and a thread would sit out the whole pause for nobody.
    """

    def __init__(self, sock: socket.socket | None):
        self._sock = sock
        self._poll = None
        if sock is not None:
            self._poll = select.poll()
            self._poll.register(sock, _WATCH)
        self.outcome: str | None = None

    def pause(self, seconds: float) -> bool:
        """Wait `seconds`; False (and `outcome` set) if the stream should stop instead."""
        if self._poll is None:
            time.sleep(seconds)
            return True
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            events = self._poll.poll(remaining * 1000.0)
            if not events:
                continue
            if self._client_gone():
                self.outcome = CLIENT_GONE
                return False
            # The client sent bytes (a pipelined request): nothing more to learn by polling.
            time.sleep(max(0.0, deadline - time.monotonic()))
            break
        return True

    def _client_gone(self) -> bool:
        try:
            return self._sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True
