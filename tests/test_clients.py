"""Per-client fairness (streamhtml/clients.py): who the client is, and its count across workers
in a table of fixed size. The wire test is in tests/test_siege.py."""

import ipaddress
from types import SimpleNamespace

import pytest

from streamhtml import capacity, clients

GOROUTER = "10.0.1.5"


@pytest.fixture
def behind_gorouter():
    clients.trust_proxies(["10.0.0.0/8"], [ipaddress.ip_network("10.0.0.0/8")])
    yield
    clients.trust_proxies([], [])


@pytest.mark.parametrize(
    "peer, forwarded_for, client",
    [
        ("203.0.113.7", None, "203.0.113.7"),
        # A peer that is no proxy speaks for itself, whatever it claims.
        ("203.0.113.7", "198.51.100.1", "203.0.113.7"),
        (GOROUTER, "198.51.100.1", "198.51.100.1"),
        # A client's own header is to the left of what gorouter appended: not believed.
        (GOROUTER, "1.1.1.1, 2.2.2.2, 198.51.100.1", "198.51.100.1"),
        # Proxies in a chain are walked through, from the right.
        (GOROUTER, "198.51.100.1, 10.0.2.9", "198.51.100.1"),
        (GOROUTER, " 10.0.2.9 ", GOROUTER),  # only proxies: the nearest stands for them
        (GOROUTER, "", GOROUTER),
    ],
)
def test_the_client_is_the_nearest_address_that_is_not_a_trusted_proxy(
    behind_gorouter, peer, forwarded_for, client
):
    assert clients.client_of(peer, forwarded_for) == client


def test_with_every_peer_trusted_the_client_is_the_address_the_nearest_proxy_saw():
    clients.trust_proxies(["*"], [])
    try:
        assert clients.client_of(GOROUTER, "1.1.1.1, 198.51.100.1") == "198.51.100.1"
    finally:
        clients.trust_proxies([], [])


def test_a_client_is_capped_and_gets_its_streams_back():
    cap = clients.ClientCap(2, None)
    assert cap.take("a") and cap.take("a")
    assert not cap.take("a")
    assert cap.take("b")
    cap.give_back("a")
    assert cap.take("a")


def test_no_cap_counts_nothing():
    cap = clients.ClientCap(None, None)
    assert all(cap.take("a") for _ in range(1000))


def test_a_bucket_shared_by_two_addresses_over_counts_never_under():
    cap = clients.ClientCap(3, None)
    one = "198.51.100.1"
    other = next(
        f"203.0.113.{n}"
        for n in range(256 * 256)
        if hash(f"203.0.113.{n}") % clients.BUCKETS == hash(one) % clients.BUCKETS
    )
    assert cap.take(one) and cap.take(one)
    assert cap.take(other)
    assert not cap.take(other) and not cap.take(one)


def test_the_count_is_shared_by_the_workers_and_a_dead_workers_row_is_cleared():
    workers = [SimpleNamespace(), SimpleNamespace()]
    for worker in workers:
        capacity.assign_slot(worker)
        clients.clear_row(worker.streamhtml_slot)
    try:
        first, second = (clients.ClientCap(3, worker.streamhtml_slot) for worker in workers)
        assert first.take("a") and second.take("a") and first.take("a")
        assert not second.take("a") and not first.take("a")
        clients.clear_row(workers[0].streamhtml_slot)  # the master, once that worker died
        assert second.take("a") and second.take("a")
        assert not second.take("a")
    finally:
        for worker in workers:
            clients.clear_row(worker.streamhtml_slot)
            capacity.release_slot(worker)


def test_the_tracker_refuses_a_client_at_its_cap_and_counts_nothing_then():
    caps = capacity.Caps(
        max_streams=10,
        max_streams_here=10,
        memory_budget_bytes=None,
        max_streams_per_client=1,
    )
    tracker = capacity.Tracker(caps, ("/streamhtml",), None, clients.ClientCap(1, None))
    held = SimpleNamespace(cut=lambda outcome: None)
    assert tracker.admit(held, "/streamhtml", 0, "a") is None
    assert tracker.admit(SimpleNamespace(), "/streamhtml", 0, "a") == capacity.CLIENT_FULL
    assert tracker.in_progress() == 1
    assert tracker.admit(SimpleNamespace(), "/streamhtml", 0, "b") is None
    tracker.release(held)
    assert tracker.admit(SimpleNamespace(), "/streamhtml", 0, "a") is None
