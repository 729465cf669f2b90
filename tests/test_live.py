"""The stream tracker: capacity counted across workers through the master's shared page."""

from types import SimpleNamespace

import pytest

from streamhtml import live


@pytest.fixture
def two_workers():
    """Two trackers as two forked workers would have them, each with its slot."""
    workers = [SimpleNamespace(), SimpleNamespace()]
    for worker in workers:
        live.assign_slot(worker)
    yield [live.Tracker(3, 100, worker.streamhtml_slot) for worker in workers]
    for worker in workers:
        live.release_slot(worker)


def test_admission_sums_the_streams_of_every_worker(two_workers):
    first, second = two_workers
    streams = [object() for _ in range(4)]
    assert first.admit(streams[0]) and first.admit(streams[1])
    assert second.admit(streams[2])
    assert not first.admit(streams[3]) and not second.admit(streams[3])
    first.release(streams[0])
    assert second.admit(streams[3])
    assert first.instance_live() == second.instance_live() == 3


def test_a_worker_also_keeps_its_own_cap():
    tracker = live.Tracker(max_streams=100, max_streams_here=2)
    assert tracker.admit(object()) and tracker.admit(object())
    assert not tracker.admit(object())


def test_a_dead_workers_slot_is_cleared_by_the_master(two_workers):
    first, second = two_workers
    worker = SimpleNamespace()
    live.assign_slot(worker)
    dying = live.Tracker(3, 100, worker.streamhtml_slot)
    assert dying.admit(object()) and dying.admit(object())
    assert first.instance_live() == 2
    live.release_slot(worker)  # child_exit, however the worker died
    assert first.instance_live() == 0


def test_shutdown_cuts_the_live_streams_when_the_grace_is_over_and_refuses_new_ones():
    cut = []
    stream = SimpleNamespace(cut=lambda: cut.append("first"))
    late = SimpleNamespace(cut=lambda: cut.append("late"))
    tracker = live.Tracker(10, 10)
    assert tracker.admit(stream)
    tracker.begin_shutdown(0.3)
    assert tracker.admit(late), "a request taken during the grace is still served"
    tracker._shutdown_timer.join(5)
    assert sorted(cut) == ["first", "late"]
    assert not tracker.admit(object())
