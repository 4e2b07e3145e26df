"""When fastxent launches a parallel kernel, and when it runs the serial twin.

Three hazards decide this:

- The ``workqueue`` layer aborts the process when two threads run parallel
  kernels at once. fastxent therefore lets one parallel kernel of its own
  run at a time: a call that finds another one running takes the serial
  twin instead (same results bit for bit, since rows are independent and
  the batch total is summed serially). On 2 cores two concurrent parallel
  calls would not be faster anyway.
- GNU OpenMP (the ``omp`` layer on Linux) cannot be used again in a child
  created by ``fork`` once the parent used it (Numba terminates the
  child). In such a child fastxent runs serial kernels only. The ``tbb``
  and ``workqueue`` layers are fork-safe and keep running in parallel.
- On a loaded machine a parallel launch waits at its closing barrier for
  every worker thread, and a worker that the scheduler has set aside costs
  a whole time slice (measured: 8192 x 10 float32 took 5-8 ms in parallel
  against 0.7 ms serially with two busy processes on 2 cores). `Dispatch`
  times both ways per problem shape and uses the faster one; it tries the
  other way again after an interval that doubles while the choice stands,
  so a stretch of load costs one slow call per interval at most. Problems
  of ``ADAPTIVE_MAX_ELEMENTS`` or more are not timed: there a serial run
  costs a whole long call, and parallel does not lose under load.
"""

import os
import threading
import time

import numba

from . import _config

_lock = threading.Lock()
_in_forked_child = False


def _after_fork_in_child():
    global _lock, _in_forked_child
    _lock = threading.Lock()
    _in_forked_child = True
    DISPATCH.reset()


def _layer_usable_here():
    if not _in_forked_child:
        return True
    try:
        return numba.threading_layer() != "omp"
    except ValueError:  # the parent never launched threads
        return True


def _median(samples):
    if len(samples) == 3:
        a, b, c = samples
        return max(min(a, b), min(max(a, b), c))
    return min(samples)


class _ShapeStats:
    """What is known about running one bucket of problem shapes."""

    __slots__ = ("parallel", "serial", "best", "spent", "interval")

    def __init__(self):
        self.parallel = []  # the last three timings, seconds per element, oldest first
        self.serial = []
        self.best = None  # True: parallel; None until both ways have been timed
        self.spent = 0.0  # seconds spent in this bucket's calls since its last probe
        self.interval = _config.PROBE_MIN_SECONDS


class Dispatch:
    """Chooses between a parallel kernel and its serial twin by measured speed.

    Statistics are kept per (kernel, rows, classes) bucket, with rows and
    classes rounded to powers of two, in seconds per element. A new bucket
    runs each way until both are timed, then uses the way with the smaller
    median of its last three timings. The other way is tried again once
    the bucket's own calls have taken ``interval`` seconds since the last
    probe. A probe that confirms the choice doubles the interval, or sets
    it to 100 times the probe's extra cost if that is longer (so probes
    cost about 1% of fastxent's time), up to ``PROBE_MAX_SECONDS``; a probe
    that overturns the choice resets it to ``PROBE_MIN_SECONDS``. Both ways
    give identical bits, so the choice never changes a result. The first
    call of each kernel through the dispatch is not timed (it may include
    compiling or loading from the disk cache).

    The interval counts the time spent in the calls, not the wall clock:
    a caller that does other work between calls (a training step, a
    benchmark that empties the caches) would otherwise pay a probe every
    ``PROBE_MAX_SECONDS`` of its own work (see the README, "Threads").
    """

    def __init__(self, clock=time.perf_counter):
        self.clock = clock
        self.reset()

    def reset(self):
        self._stats = {}
        self._warm = set()

    def stats(self, parallel_kernel, shape):
        """The `_ShapeStats` of a problem shape's bucket (created when new)."""
        key = (parallel_kernel, shape[0].bit_length(), shape[-1].bit_length())
        stats = self._stats.get(key)
        if stats is None:
            stats = self._stats[key] = _ShapeStats()
        return stats

    def run(self, parallel_kernel, serial_kernel, n_elements, args):
        stats = self.stats(parallel_kernel, args[0].shape)
        start = self.clock()
        probe = False
        if stats.best is None:
            parallel = not stats.parallel
        elif stats.spent >= stats.interval:
            parallel, probe = not stats.best, True
        else:
            parallel = stats.best
        if parallel:
            lock = _lock
            if not lock.acquire(blocking=False):
                return serial_kernel(*args)  # another thread's parallel kernel is running
            try:
                result = parallel_kernel(*args)
            finally:
                lock.release()
            kernel, samples = parallel_kernel, stats.parallel
        else:
            result = serial_kernel(*args)
            kernel, samples = serial_kernel, stats.serial
        end = self.clock()
        stats.spent += end - start
        if kernel not in self._warm:
            self._warm.add(kernel)
            return result
        samples.append((end - start) / n_elements)
        if len(samples) > 3:
            del samples[0]
        if stats.parallel and stats.serial:
            est_p, est_s = _median(stats.parallel), _median(stats.serial)
            stats.best = est_p <= est_s
            if probe:
                if stats.best != parallel:  # the probe lost: the choice stands
                    excess = abs(est_p - est_s) * n_elements
                    stats.interval = min(max(2.0 * stats.interval, 100.0 * excess), _config.PROBE_MAX_SECONDS)
                else:
                    stats.interval = _config.PROBE_MIN_SECONDS
                stats.spent = 0.0
        return result


DISPATCH = Dispatch()
os.register_at_fork(after_in_child=_after_fork_in_child)


def run(parallel_kernel, serial_kernel, n_elements, *args, min_elements=None):
    """Call the parallel kernel when it pays off and is safe, else its twin.

    ``args[0]`` is the array whose rows (first axis) the kernel splits
    between threads. Below ``min_elements`` (default
    ``PARALLEL_MIN_ELEMENTS``) the serial twin runs.
    """
    if (
        n_elements >= (_config.PARALLEL_MIN_ELEMENTS if min_elements is None else min_elements)
        and args[0].shape[0] > 1
        and numba.get_num_threads() > 1
        and _layer_usable_here()
    ):
        if _config.ADAPTIVE_DISPATCH and n_elements < _config.ADAPTIVE_MAX_ELEMENTS:
            return DISPATCH.run(parallel_kernel, serial_kernel, n_elements, args)
        lock = _lock
        if lock.acquire(blocking=False):
            try:
                return parallel_kernel(*args)
            finally:
                lock.release()
    return serial_kernel(*args)
