"""The bench's own tools still run against this tree (bench/inprocess.py)."""

import subprocess
import sys

import pytest
from support import REPO

INPROCESS = [sys.executable, str(REPO / "bench" / "inprocess.py"), str(REPO), "--rounds", "1"]


def test_the_in_process_harness_times_a_real_answer():
    done = subprocess.run(
        [*INPROCESS, "-n", "50"], capture_output=True, text=True, timeout=120, check=True
    )
    best = float(done.stdout.splitlines()[-1].split()[-2])
    assert best > 0, done.stdout


@pytest.mark.parametrize("path", ["/no-such-page", "/streamhtml?nblocks=x"])
def test_the_in_process_harness_refuses_to_time_a_request_that_failed(path):
    done = subprocess.run(
        [*INPROCESS, "-n", "50", "--path", path], capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0
    assert "was not answered 200" in done.stderr
