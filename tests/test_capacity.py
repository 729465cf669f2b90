"""The stream tracker: capacity counted across workers through the master's shared page."""

from types import SimpleNamespace

import pytest

from streamhtml import capacity

ROUTES = ("/streamhtml", "/large.csv")


def caps(max_csv_streams=100, **overrides):
    csv_cap = capacity.RouteCap("csv downloads", max_csv_streams, ("/large.csv",))
    limits = dict(
        max_streams=3,
        max_streams_here=100,
        memory_budget_bytes=None,
        route_caps={"/large.csv": csv_cap},
    )
    return capacity.Caps(**{**limits, **overrides})


def stream():
    return SimpleNamespace(cut=lambda outcome: None)


@pytest.fixture
def two_workers():
    """Two trackers as two forked workers would have them, each with its slot."""
    workers = [SimpleNamespace(), SimpleNamespace()]
    for worker in workers:
        capacity.assign_slot(worker)
    yield [capacity.Tracker(caps(), ROUTES, worker.streamhtml_slot) for worker in workers]
    for worker in workers:
        capacity.release_slot(worker)


def test_admission_sums_the_streams_of_every_worker(two_workers):
    first, second = two_workers
    streams = [stream() for _ in range(4)]
    assert first.admit(streams[0], "/streamhtml", 0) is None
    assert first.admit(streams[1], "/streamhtml", 0) is None
    assert second.admit(streams[2], "/large.csv", 0) is None
    assert first.admit(streams[3], "/streamhtml", 0) == capacity.FULL
    assert second.admit(streams[3], "/streamhtml", 0) == capacity.FULL
    first.release(streams[0])
    assert second.admit(streams[3], "/streamhtml", 0) is None
    assert first.in_progress() == second.in_progress() == 3
    assert first.in_progress("/streamhtml") == 2 and first.in_progress("/large.csv") == 1


def test_a_worker_also_keeps_its_own_cap():
    tracker = capacity.Tracker(caps(max_streams=100, max_streams_here=2), ROUTES)
    assert tracker.admit(stream(), "/streamhtml", 0) is None
    assert tracker.admit(stream(), "/streamhtml", 0) is None
    assert tracker.admit(stream(), "/streamhtml", 0) == capacity.WORKER_FULL


def test_csv_downloads_have_a_cap_of_their_own():
    tracker = capacity.Tracker(caps(max_streams=100, max_csv_streams=1), ROUTES)
    assert tracker.admit(stream(), "/large.csv", 0) is None
    assert tracker.admit(stream(), "/large.csv", 0) == capacity.CSV_FULL
    assert tracker.admit(stream(), "/streamhtml", 0) is None


def test_routes_that_name_one_cap_share_it():
    shared = capacity.RouteCap("exports", 2, ("/export.csv", "/export.ndjson"))
    routes = {"/export.csv": shared, "/export.ndjson": shared}
    tracker = capacity.Tracker(caps(max_streams=100, route_caps=routes), [*ROUTES, *routes])
    assert tracker.admit(stream(), "/export.csv", 0) is None
    assert tracker.admit(stream(), "/export.ndjson", 0) is None
    assert tracker.admit(stream(), "/export.csv", 0) == "exports full"
    assert tracker.admit(stream(), "/streamhtml", 0) is None


def test_a_stream_of_a_route_nobody_declared_is_counted_as_other_not_refused():
    tracker = capacity.Tracker(caps(max_streams=100), ROUTES)
    assert tracker.admit(stream(), "/my-own-export", 0) is None
    assert tracker.in_progress("/my-own-export") == tracker.in_progress("other") == 1
    assert tracker.in_progress() == 1


def test_streams_are_admitted_against_the_memory_budget_and_give_it_back():
    tracker = capacity.Tracker(caps(max_streams=100, memory_budget_bytes=1000), ROUTES)
    held = [stream() for _ in range(3)]
    assert tracker.admit(held[0], "/streamhtml", 400) is None
    assert tracker.admit(held[1], "/streamhtml", 400) is None
    assert tracker.admit(held[2], "/streamhtml", 400) == capacity.MEMORY_FULL
    assert tracker.held_bytes() == 800
    tracker.release(held[0])
    assert tracker.admit(held[2], "/streamhtml", 400) is None


def test_large_streams_leave_the_last_eighth_of_the_budget_to_small_ones():
    budget = 8000
    tracker = capacity.Tracker(
        caps(max_streams=100, memory_budget_bytes=budget, small_stream_bytes=100), ROUTES
    )
    large = [stream() for _ in range(4)]
    for each in large[:3]:
        assert tracker.admit(each, "/streamhtml", 2000) is None
    assert tracker.admit(large[3], "/streamhtml", 2000) == capacity.MEMORY_FULL  # 8000 > 7000
    for _ in range(20):
        assert tracker.admit(stream(), "/streamhtml", 100) is None  # small ones fill it all
    assert tracker.held_bytes() == budget
    assert tracker.admit(stream(), "/streamhtml", 100) == capacity.MEMORY_FULL


def test_a_dead_workers_slot_is_cleared_by_the_master(two_workers):
    first, _ = two_workers
    worker = SimpleNamespace()
    capacity.assign_slot(worker)
    dying = capacity.Tracker(caps(memory_budget_bytes=10_000), ROUTES, worker.streamhtml_slot)
    assert dying.admit(stream(), "/streamhtml", 500) is None
    assert dying.admit(stream(), "/streamhtml", 500) is None
    assert first.in_progress() == 2 and first.held_bytes() == 1000
    capacity.release_slot(worker)  # child_exit, however the worker died
    assert first.in_progress() == 0 and first.held_bytes() == 0


def test_each_worker_sees_the_fewest_connections_another_accepting_worker_holds():
    workers = [SimpleNamespace() for _ in range(3)]
    for worker in workers:
        capacity.assign_slot(worker)
    try:
        held = {0: 4, 1: 2, 2: None}  # the third accepts none now (at its cap, or stopping)
        for index, worker in enumerate(workers):
            capacity.attach_worker(worker)
            capacity.publish_connections(held[index])
        capacity.attach_worker(workers[0])
        assert capacity.fewest_connections_elsewhere() == 2
        capacity.attach_worker(workers[1])
        assert capacity.fewest_connections_elsewhere() == 4
        capacity.publish_connections(0)
        capacity.attach_worker(workers[0])
        assert capacity.fewest_connections_elsewhere() == 0, "0 held is not 'not accepting'"
        capacity.release_slot(workers[1])  # the master clears a dead worker's slot
        assert capacity.fewest_connections_elsewhere() is None
    finally:
        capacity.attach_worker(SimpleNamespace())
        for worker in workers:
            capacity.release_slot(worker)


def test_shutdown_cuts_the_live_streams_when_the_grace_is_over_and_refuses_new_ones():
    cut = []
    first = SimpleNamespace(cut=lambda outcome: cut.append(("first", outcome)))
    late = SimpleNamespace(cut=lambda outcome: cut.append(("late", outcome)))
    tracker = capacity.Tracker(caps(max_streams=10), ROUTES)
    assert tracker.admit(first, "/streamhtml", 0) is None
    timer = tracker.begin_shutdown(0.3)
    assert tracker.admit(late, "/streamhtml", 0) is None, "a request taken in the grace is served"
    timer.join(5)
    assert sorted(cut) == [("first", "cut_by_shutdown"), ("late", "cut_by_shutdown")]
    assert tracker.admit(stream(), "/streamhtml", 0) == capacity.SHUTTING_DOWN


def test_a_stream_is_charged_the_smaller_of_its_body_and_its_send_buffer():
    from streamhtml.settings import Limits
    from streamhtml.streaming import STREAM_RSS_BYTES, stream_base_bytes, stream_charge_bytes

    limits = Limits()  # a 128 KiB SO_SNDBUF: the kernel holds up to 256 KiB
    small = stream_charge_bytes(limits, 512, most_bytes=512, items=1)
    assert STREAM_RSS_BYTES < small <= STREAM_RSS_BYTES + 16 * 1024
    # 499 paced streams of 512 bytes fit half of a 256M quota, with room to spare.
    assert 499 * small < 128 * 1024 * 1024 * 0.5
    large = stream_charge_bytes(limits, 1024, most_bytes=200 * 1024, items=200)
    assert large == stream_base_bytes(limits) + 1024
    # A body of no known size: its process share and the whole doubled send buffer.
    assert stream_charge_bytes(limits, 0) == STREAM_RSS_BYTES + 2 * limits.send_buffer_bytes
    assert limits.send_buffer_bytes == 128 * 1024
    # Items of unknown count may each be a byte, each with its chunk framing.
    assert stream_charge_bytes(limits, 0, most_bytes=10_000) > stream_charge_bytes(
        limits, 0, most_bytes=10_000, items=10
    )
