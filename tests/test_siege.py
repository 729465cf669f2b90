"""The siege: each attack of a hostile or careless client, run against a fresh instance.

While an attack holds, the platform's health check must keep passing (`/health` in under 1 s
for at least 95% of probes), a normal client's paced stream must arrive whole, and the
instance's RSS must stay under 75% of its memory quota (the manifest's, given to the app as
MEMORY_LIMIT as Cloud Foundry does); once the attackers leave, RSS must fall back under 50%.
`make bench` runs the same attacks and reports the figures (bench/siege.py).
"""

import time

import pytest
import siege_support as siege
from cf_support import manifest_app, megabytes

pytestmark = [pytest.mark.slow, pytest.mark.siege]

QUOTA_MIB = megabytes(manifest_app()["memory"])
ATTACK_S = siege.ATTACK_S
ATTACKS = siege.ATTACKS
SLOTS_FREE_S = 1.0
MEMORY_BACK_S = 5.0


@pytest.mark.parametrize("attack", ATTACKS.values(), ids=ATTACKS.keys())
def test_the_instance_stays_healthy_and_within_its_quota(start_server, attack):
    server = start_server({"MEMORY_LIMIT": f"{QUOTA_MIB}m"})
    with siege.Watch(server) as watch:
        with attack(server.port):
            time.sleep(ATTACK_S / 2)
            paced_whole = siege.paced_stream_completes(server.port)
            time.sleep(ATTACK_S / 2)
        left_at = time.monotonic()
        # The attackers have gone: their streams' slots are free within a second.
        while (streams := siege.streams_in_progress(server.port)) != 0:
            assert time.monotonic() - left_at < SLOTS_FREE_S, f"{streams} streams still held"
            time.sleep(0.05)
    health = watch.health
    print(
        f"/health {health.answered_in_time:.1%} of {health.probes} probes in time, "
        f"p99 {health.p99_s * 1000:.0f} ms; peak RSS {watch.peak_rss_mib:.0f} MiB, with socket "
        f"buffers {watch.peak_total_mib:.0f} MiB, of {QUOTA_MIB} MiB"
    )
    assert health.probes >= 20, "the probe itself could not run"
    assert health.answered_in_time >= 0.95, "Cloud Foundry would restart this instance"
    assert paced_whole, "a normal client's stream did not arrive whole during the attack"
    assert watch.peak_total_mib < 0.75 * QUOTA_MIB
    deadline = time.monotonic() + MEMORY_BACK_S
    while siege.instance_rss_mib(server) >= 0.5 * QUOTA_MIB:
        assert time.monotonic() < deadline, "memory did not come back after the attack"
        time.sleep(0.2)
    assert "Traceback" not in server.log()


def test_499_small_paced_streams_run_together_at_a_256m_quota(start_server):
    server = start_server({"MEMORY_LIMIT": "256m"})
    path = "/streamhtml?nblocks=2&block_size=256&sleep_ms=3000"
    with siege.connections(
        server.port, 499, f"GET {path} HTTP/1.1\r\nHost: s\r\n\r\n".encode()
    ) as held:
        statuses = [siege.read_status(sock) for sock in held]
        assert statuses.count(200) == 499, {s: statuses.count(s) for s in set(statuses)}


def test_with_a_per_client_cap_of_50_one_client_gets_exactly_50_and_another_its_own(
    start_server,
):
    server = start_server({"STREAMHTML_MAX_STREAMS_PER_CLIENT": "50"})
    path = "/streamhtml?nblocks=2&block_size=64&sleep_ms=5000"
    asked = f"GET {path} HTTP/1.1\r\nHost: s\r\n\r\n".encode()
    held = []
    try:
        for _ in range(60):
            sock = siege.connect(server.port)
            sock.sendall(asked)
            held.append(sock)
        starts = [siege.read_start(sock) for sock in held]
        statuses = [start[:12] for start in starts]
        assert statuses.count(b"HTTP/1.1 200") == 50, statuses
        assert statuses.count(b"HTTP/1.1 503") == 10, statuses
        refused = starts[statuses.index(b"HTTP/1.1 503")].decode()
        if "\r\n\r\n{" not in refused:
            refused += held[statuses.index(b"HTTP/1.1 503")].recv(65536).decode()
        assert "Retry-After: 1" in refused
        assert "STREAMHTML_MAX_STREAMS_PER_CLIENT" in refused
        # Another client (another address) still gets its own streams.
        for _ in range(3):
            other = siege.connect(server.port, source="127.0.0.2")
            other.sendall(asked)
            held.append(other)
            assert siege.read_status(other) == 200
    finally:
        for sock in held:
            sock.close()
