"""The serial/parallel dispatch: which way runs, on a clock the test controls."""

import numpy as np
import pytest

from fastxent import _config
from fastxent._threading import LEARNING_CALLS, PROBE_CALLS, SAMPLES, Dispatch


class FakeMachine:
    """Two stand-in kernels whose cost (seconds) the test sets; a fake clock.

    A parallel launch more than ``spin`` seconds after the last one also
    pays ``wake_cost``: worker threads that stop spinning go to sleep. The
    first calls after 0.05 s without any call also pay ``ramp`` (seconds
    for the first, second, ... call), whichever way runs: idle virtual CPUs
    of a VM take a while to come back to speed.
    """

    def __init__(self, parallel_cost, serial_cost, wake_cost=0.0, spin=3e-3, ramp=()):
        self.now = 0.0
        self.cost = {"parallel": parallel_cost, "serial": serial_cost}
        self.wake_cost, self.spin, self.ramp = wake_cost, spin, ramp
        self.last_launch = self.last_end = float("-inf")
        self.since_pause = 0
        self.calls = []

    def clock(self):
        return self.now

    def kernel(self, way):
        def run(x):
            self.calls.append(way)
            if self.now - self.last_end > 0.05:
                self.since_pause = 0
            if self.since_pause < len(self.ramp):
                self.now += self.ramp[self.since_pause]
            self.since_pause += 1
            self.now += self.cost[way]
            if way == "parallel":
                if self.now - self.last_launch > self.spin:
                    self.now += self.wake_cost
                self.last_launch = self.now
            self.last_end = self.now
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


def serial_streaks(calls):
    return sum(1 for a, b in zip(["parallel"] + calls, calls) if (a, b) == ("parallel", "serial"))


def test_idle_machine_runs_parallel_and_rarely_probes(machine):
    calls = run_calls(machine, 5000)  # half a second in calls
    after_learning = calls[LEARNING_CALLS:]
    assert serial_streaks(after_learning) <= 3, "probes after 0.05, 0.1 and 0.2 s of calls, then 0.4 s"
    assert after_learning.count("serial") <= 3 * PROBE_CALLS
    assert calls[-100:].count("parallel") >= 99


def test_probes_cost_little_when_the_caller_works_between_calls(machine):
    """The probe interval counts the calls' own time: a caller that spends 60 ms
    between 7 ms calls pays probes of about 1 % of fastxent's time, not one
    slow call a second."""
    machine.cost.update(parallel=7e-3, serial=12e-3)
    calls = run_calls(machine, 300, gap=0.06)[LEARNING_CALLS:]  # about 20 s of the caller's work
    all_parallel = len(calls) * 7e-3
    extra = calls.count("serial") * (12e-3 - 7e-3)
    assert extra <= 0.02 * all_parallel, f"{calls.count('serial')} serial calls of {len(calls)}"
    assert calls[-100:].count("parallel") >= 98


def test_load_switches_to_serial_and_back(machine):
    run_calls(machine, 1000)
    machine.cost["parallel"] = 5e-3  # a descheduled worker: a time slice per launch
    calls = run_calls(machine, 3000)
    first_serial_streak = calls.index("serial")
    assert first_serial_streak <= 3, "three slow launches are enough to switch"
    slow = calls.count("parallel")
    seconds = 3000 * 4e-4
    assert slow <= 3 + seconds / 0.05, f"{slow} slow launches in about {seconds:.1f} s"
    assert slow * 5e-3 < 0.05 * (3000 * 4e-4 + slow * 5e-3), "probes cost under 5% of the time"
    machine.cost["parallel"] = 1e-4  # load gone
    calls = run_calls(machine, 10000)
    assert calls[-1000:].count("parallel") >= 990, "back to parallel"
    back = next(i for i in range(len(calls)) if calls[i : i + 20].count("parallel") == 20)
    assert back * 2e-4 <= 2 * _config.PROBE_MAX_SECONDS + 0.1, "within two probe intervals"


def test_a_probe_does_not_time_waking_the_worker_threads(machine):
    """After serial calls the next parallel launch wakes sleeping threads
    (8192 x 10 float32: 125-180 us against 52 back to back, serial 95): a
    probe that timed that launch would keep an idle machine serial."""
    machine.cost.update(parallel=1e-4, serial=2e-4)
    machine.wake_cost = 1.5e-4
    run_calls(machine, 1000)
    machine.cost["parallel"] = 5e-3  # load: the dispatch turns serial
    assert run_calls(machine, 500)[-100:].count("serial") >= 99
    machine.cost["parallel"] = 1e-4  # load gone
    calls = run_calls(machine, 10000)
    assert calls[-1000:].count("parallel") >= 990, "back to parallel"


def test_calls_far_apart_pay_the_wake_up_and_stay_serial(machine):
    """When the caller's own work between calls lets the threads sleep every
    time, each parallel call pays the wake-up, and serial is the faster way."""
    machine.cost.update(parallel=1e-4, serial=2e-4)
    machine.wake_cost = 1.5e-4
    calls = run_calls(machine, 3000, gap=0.01)
    assert calls[-1000:].count("serial") >= 990


def test_a_passing_stall_costs_little_after_a_long_standing_choice(machine):
    """Three slow launches turn the choice to serial; when that happens after
    the probe interval has grown to its maximum, the parallel way is tried
    again within a few short intervals, not after a whole long one."""
    run_calls(machine, 20000)  # two seconds of calls: the interval is at its maximum
    machine.cost["parallel"] = 5e-3
    assert run_calls(machine, 4) == ["parallel"] * 3 + ["serial"]
    machine.cost["parallel"] = 1e-4
    calls = run_calls(machine, 5000)
    assert calls[-1000:].count("parallel") >= 995
    serial_seconds = calls.count("serial") * 3e-4
    assert serial_seconds <= 4 * _config.PROBE_MIN_SECONDS, f"{serial_seconds:.2f} s of serial calls"


def test_runs_of_calls_after_long_pauses_stay_parallel(machine):
    """After 0.2 s asleep the first calls of a run are slow whichever way
    runs (a VM: 3.5 ms, 0.2 ms, then 68 us against 57 for 8192 x 10 float32
    in parallel): timing the first of them as well turned the choice to
    serial for the rest of the run."""
    machine.ramp = (5e-3, 1e-3, 3e-4)
    calls = []
    for _ in range(40):
        calls += run_calls(machine, 50)
        machine.now += 0.2
    assert calls[-1000:].count("parallel") >= 990


def test_first_call_of_a_kernel_is_not_timed(machine):
    machine.cost["parallel"] = 10.0  # a first call that compiles
    run_calls(machine, 1)
    machine.cost["parallel"] = 1e-4
    calls = run_calls(machine, 200)
    assert calls[-50:].count("parallel") == 50


def test_one_slow_launch_does_not_decide_a_new_shape(machine):
    """The first parallel launch after other threaded work (PyTorch's OpenMP
    pool still spinning) can be several times slower than the next ones;
    the choice for a new shape must not rest on that one timing."""
    costs = iter([1e-4, 6e-4])  # the untimed first call, then one slow launch
    parallel = machine.parallel

    def first_timed_launch_slow(x):
        machine.cost["parallel"] = next(costs, 1e-4)
        return parallel(x)

    machine.parallel = first_timed_launch_slow
    calls = run_calls(machine, 100)
    learning = ["parallel", "parallel", "serial", "serial", "parallel"] + ["parallel", "serial"] * (SAMPLES - 1)
    assert calls[: len(learning)] == learning, (
        "each kernel's first call untimed, then SAMPLES timings each way, taken in turn; the launch "
        "after the serial twin's first call (a load from the disk cache) wakes the threads, untimed"
    )
    assert calls[len(learning) :].count("parallel") == 100 - len(learning)


def test_shapes_are_judged_apart(machine):
    small, large = np.zeros((1000, 10)), np.zeros((500, 32000))
    run_calls(machine, 200, small)
    machine.cost["parallel"] = 5e-3
    run_calls(machine, 200, small)
    machine.cost["parallel"] = 1e-4
    calls = run_calls(machine, 30, large)  # a new bucket starts with parallel
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
