"""The serial/parallel dispatch: which way runs, on a clock the test controls."""

import numpy as np
import pytest

from fastxent import _config
from fastxent._threading import Dispatch


class FakeMachine:
    """Two stand-in kernels whose cost (seconds) the test sets; a fake clock."""

    def __init__(self, parallel_cost, serial_cost):
        self.now = 0.0
        self.cost = {"parallel": parallel_cost, "serial": serial_cost}
        self.calls = []

    def clock(self):
        return self.now

    def kernel(self, way):
        def run(x):
            self.calls.append(way)
            self.now += self.cost[way]
            return way

        run.__name__ = way
        return run


@pytest.fixture
def machine():
    m = FakeMachine(parallel_cost=1e-4, serial_cost=3e-4)
    m.dispatch = Dispatch(clock=m.clock)
    m.parallel, m.serial = m.kernel("parallel"), m.kernel("serial")
    return m


def run_calls(m, n, x=np.zeros((1000, 10)), gap=1e-4):
    start = len(m.calls)
    for _ in range(n):
        m.dispatch.run(m.parallel, m.serial, x.size, (x,))
        m.now += gap  # the caller's own work between calls
    return m.calls[start:]


def test_idle_machine_runs_parallel_and_rarely_probes(machine):
    calls = run_calls(machine, 5000)  # about a second of calls
    assert calls[:2] == ["parallel", "parallel"] and "serial" in calls[:6]
    assert calls.count("serial") <= 12, "the serial probes back off"
    assert calls[-100:].count("parallel") >= 99


def test_probes_cost_little_when_the_caller_works_between_calls(machine):
    """The probe interval counts the calls' own time: a caller that spends 60 ms
    between 7 ms calls pays probes of about 1 % of fastxent's time, not one
    slow call a second."""
    machine.cost.update(parallel=7e-3, serial=12e-3)
    calls = run_calls(machine, 300, gap=0.06)  # about 20 s of the caller's work
    all_parallel = 300 * 7e-3
    extra = calls.count("serial") * (12e-3 - 7e-3)
    assert extra <= 0.02 * all_parallel, f"{calls.count('serial')} serial calls of 300"
    assert calls[-100:].count("parallel") >= 98


def test_load_switches_to_serial_and_back(machine):
    run_calls(machine, 1000)
    machine.cost["parallel"] = 5e-3  # a descheduled worker: a time slice per launch
    calls = run_calls(machine, 3000)
    first_serial_streak = calls.index("serial")
    assert first_serial_streak <= 3, "two slow launches are enough to switch"
    slow = calls.count("parallel")
    seconds = 3000 * 4e-4
    assert slow <= 3 + seconds / 0.05, f"{slow} slow launches in about {seconds:.1f} s"
    assert slow * 5e-3 < 0.05 * (3000 * 4e-4 + slow * 5e-3), "probes cost under 5% of the time"
    machine.cost["parallel"] = 1e-4  # load gone
    calls = run_calls(machine, 10000)
    assert calls[-1000:].count("parallel") >= 990, "back to parallel"
    back = next(i for i in range(len(calls)) if calls[i : i + 20].count("parallel") == 20)
    assert back * 2e-4 <= 2 * _config.PROBE_MAX_SECONDS + 0.1, "within two probe intervals"


def test_first_call_of_a_kernel_is_not_timed(machine):
    machine.cost["parallel"] = 10.0  # a first call that compiles
    run_calls(machine, 1)
    machine.cost["parallel"] = 1e-4
    calls = run_calls(machine, 200)
    assert calls[-50:].count("parallel") == 50


def test_shapes_are_judged_apart(machine):
    small, large = np.zeros((1000, 10)), np.zeros((500, 32000))
    run_calls(machine, 200, small)
    machine.cost["parallel"] = 5e-3
    run_calls(machine, 200, small)
    machine.cost["parallel"] = 1e-4
    calls = run_calls(machine, 20, large)  # a new bucket starts with parallel
    assert calls[0] == "parallel" and calls[-10:].count("parallel") == 10


def test_huge_problems_always_run_parallel_untimed(monkeypatch):
    """Learning and probing would run whole huge calls serially: above the limit nothing is timed."""
    from fastxent import _threading

    calls = []
    monkeypatch.setattr(_threading.numba, "get_num_threads", lambda: 2)
    monkeypatch.setattr(_config, "ADAPTIVE_MAX_ELEMENTS", 10_000)
    monkeypatch.setattr(_threading, "DISPATCH", Dispatch())
    parallel = lambda x: calls.append("parallel")  # noqa: E731
    serial = lambda x: calls.append("serial")  # noqa: E731
    huge, small = np.zeros((1000, 10)), np.zeros((1000, 9))
    for _ in range(50):
        _threading.run(parallel, serial, huge.size, huge)
    assert calls == ["parallel"] * 50
    calls.clear()
    for _ in range(50):
        _threading.run(parallel, serial, small.size, small)
    assert "serial" in calls, "below the limit the dispatch still times both ways"
