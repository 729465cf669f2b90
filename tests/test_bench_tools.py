"""The bench's own tools still run against this tree (bench/inprocess.py)."""

import subprocess
import sys

import pytest
from support import REPO

INPROCESS = [sys.executable, str(REPO / "bench" / "inprocess.py"), str(REPO), "--rounds", "1"]


def test_the_in_process_harness_times_a_real_answer_here_and_in_the_minimal_app():
    done = subprocess.run(
        [*INPROCESS, "minimal", "-n", "50"], capture_output=True, text=True, timeout=120, check=True
    )
    *_, ours, minimal = done.stdout.splitlines()
    assert float(ours.split()[-2]) > 0 and float(minimal.split()[-2]) > 0, done.stdout
    assert minimal.startswith("minimal"), done.stdout


@pytest.mark.parametrize("path", ["/no-such-page", "/streamhtml?nblocks=x"])
def test_the_in_process_harness_refuses_to_time_a_request_that_failed(path):
    done = subprocess.run(
        [*INPROCESS, "-n", "50", "--path", path], capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0
    assert "was not answered 200" in done.stderr
