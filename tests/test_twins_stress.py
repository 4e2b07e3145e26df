"""Stress: parallel kernels and their serial twins agree bit for bit.

Random problems (shapes, dtypes, options, buffer offsets, non-finite rows)
in this process and in fresh processes with a cold and then a warm disk
cache. The runs that compile go first and alone; the runs after them, with
everything compiled, have two busy processes keeping the cores loaded. Each
part runs for a bounded time.
"""

import os
import subprocess
import sys
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numba
import pytest

import twins_stress
from conftest import large

pytestmark = large

HERE = Path(__file__).parent


@contextmanager
def busy_processes(count=2, seconds=300):
    procs = [
        subprocess.Popen([sys.executable, "-c", f"import time\nt = time.time() + {seconds}\nwhile time.time() < t: pass"])
        for _ in range(count)
    ]
    try:
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_twins_agree_under_load_in_process():
    count, mismatches = twins_stress.run(seed=10, seconds=120, max_problems=60)  # compiles or loads every signature
    assert not mismatches, mismatches[:10]
    with busy_processes():
        count, mismatches = twins_stress.run(seed=11, seconds=8)
    assert count > 50
    assert not mismatches, mismatches[:10]


@pytest.mark.skipif(numba.config.DISABLE_JIT, reason="compiles in fresh processes")
def test_twins_agree_with_cold_and_warm_disk_cache(tmp_path):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"), FASTXENT_CACHE="1")
    # The first process compiles every signature and writes the cache, the
    # second loads it. Only the second runs beside the busy processes: load
    # changes nothing in what is compiled; compiling under it made this test
    # take 230 s against 155.
    for seed, loaded in ((12, False), (13, True)):
        with busy_processes() if loaded else nullcontext():
            proc = subprocess.run(
                [sys.executable, str(HERE / "twins_stress.py"), str(seed), "5"],
                env=env, capture_output=True, text=True, timeout=600,
            )
        assert proc.returncode == 0, proc.stdout + proc.stderr
    assert any((tmp_path / "cache").rglob("*.nbc")), "the disk cache was used"
