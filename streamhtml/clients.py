"""Per-client fairness, opt in (STREAMHTML_MAX_STREAMS_PER_CLIENT): how many streams one client
holds at once on the instance, all workers together, in memory bounded however many addresses
appear.

The client is the peer's address. Behind a peer that gunicorn's forwarded_allow_ips trusts (a
proxy: gorouter on Cloud Foundry), it is the nearest address in X-Forwarded-For that is not
itself a trusted proxy, read from the right: each proxy appends the address it saw, so a client
cannot choose it by sending its own header. `*` trusts every peer but no address in the header,
so the client is then the one the nearest proxy saw (SECURITY.md says how to set the list).

Counts live in a shared anonymous mapping made in the master before it forks (as
streamhtml/capacity.py's page): one row per worker slot, each a fixed table of BUCKETS counters,
indexed by a hash of the address. A worker writes only its own row, and the master clears a dead
worker's row; a client's count is its bucket summed over the rows in use. Two addresses in one
bucket are counted together: a collision can only over-count, never under-count. Python's
string hash is salted afresh at each start, so a client cannot aim at another's bucket.
"""

from __future__ import annotations

import ipaddress
import mmap
import threading

from . import capacity

BUCKETS = 4096
# X-Forwarded-For entries read from the right, at most; a longer chain is a client's own text.
MAX_HOPS = 16
MAX_ADDRESS_CHARS = 64

_rows = memoryview(mmap.mmap(-1, capacity.MAX_SLOTS * BUCKETS * 4)).cast("i")


def clear_row(slot: int) -> None:
    """In the master: a worker about to start in `slot`, or just dead, holds no streams."""
    start = slot * BUCKETS
    _rows[start : start + BUCKETS] = memoryview(bytes(BUCKETS * 4)).cast("i")


class ClientCap:
    """The per-client count of one worker process, against the cap (None: no cap)."""

    def __init__(self, most: int | None, slot: int | None):
        self.most = most
        self._slot = slot
        self._own = [0] * BUCKETS if slot is None else None  # Flask's test client: this process
        self._lock = threading.Lock()

    def take(self, client: str) -> bool:
        """Count one more stream for `client`; False (and nothing counted) past the cap."""
        if self.most is None:
            return True
        bucket = hash(client) % BUCKETS
        with self._lock:
            # Counted first, then summed: two workers admitting the same client at once may
            # both refuse at the cap, never both admit past it.
            self._add(bucket, 1)
            if self._held(bucket) > self.most:
                self._add(bucket, -1)
                return False
            return True

    def give_back(self, client: str) -> None:
        if self.most is not None:
            with self._lock:
                self._add(hash(client) % BUCKETS, -1)

    def _add(self, bucket: int, delta: int) -> None:
        if self._own is not None:
            self._own[bucket] += delta
        else:
            _rows[(self._slot or 0) * BUCKETS + bucket] += delta

    def _held(self, bucket: int) -> int:
        if self._own is not None:
            return self._own[bucket]
        used = capacity.slots_used()
        return sum(_rows[bucket : used * BUCKETS : BUCKETS])


class Proxies:
    """Which addresses are proxies, as gunicorn's forwarded_allow_ips says."""

    def __init__(self, allow_list=(), networks=()):
        self.trust_any_peer = "*" in allow_list
        self.networks = tuple(networks)

    def trusts_peer(self, address: str) -> bool:
        return self.trust_any_peer or self.is_proxy(address)

    def is_proxy(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.networks)


_proxies = Proxies()


def trust_proxies(allow_list, networks) -> None:
    """In a worker: gunicorn's forwarded_allow_ips (and its parsed networks) decide."""
    global _proxies
    _proxies = Proxies(allow_list, networks)


def client_of(peer: str | None, forwarded_for: str | None) -> str:
    """The address a stream is counted against (see the module's docstring)."""
    peer = peer or ""
    if not forwarded_for or not _proxies.trusts_peer(peer):
        return peer
    hops = [hop.strip() for hop in forwarded_for.rsplit(",", MAX_HOPS)[-MAX_HOPS:]]
    for hop in reversed(hops):
        if hop and not _proxies.is_proxy(hop):
            return hop[:MAX_ADDRESS_CHARS]
    return peer  # every hop a proxy: the nearest one stands for them
