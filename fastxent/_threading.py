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
  so a stretch of load costs a few slow calls per interval at most. Problems
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


# Timings kept per way and bucket; the way with the smaller median runs.
# A new bucket runs each way this many times before its first choice.
# Three were too few on a 2-core Xeon VM: a launch that wakes sleeping
# worker threads, and often the one after it, take 2 to 6 times as long as
# the rest (8192 x 10 float32: 150-340 us, then 100-180, against 50-55),
# so with three timings a caller that works 6 ms between runs of 64 calls
# saw its parallel median pass the serial one (95 us) and ran 36 to 63 %
# of its calls serially. The median of five needs three slow launches: a
# time slice lost to load still turns the choice within three calls.
SAMPLES = 5
PROBE_CALLS = SAMPLES // 2 + 1
# The calls a new shape takes before its first choice when both kernels are
# new to the process: each kernel's untimed first call, the untimed launch
# that wakes the threads after the serial twin's load, SAMPLES timings each way.
LEARNING_CALLS = 2 * SAMPLES + 3


def _median(samples):
    return sorted(samples)[len(samples) // 2]


class _ShapeStats:
    """What is known about running one bucket of problem shapes."""

    __slots__ = ("parallel", "serial", "best", "probing", "probe_left", "waking", "paused", "last_end", "spent",
                 "interval")

    def __init__(self):
        self.parallel = []  # the last SAMPLES timings, seconds per element, oldest first
        self.serial = []
        self.best = None  # True: parallel; None until both ways have been timed SAMPLES times
        self.probing = None  # during a probe, the way being timed afresh (True: parallel)
        self.probe_left = 0  # the probe's timings still to take
        self.waking = False  # the next parallel launch wakes the worker threads: not timed
        self.paused = False  # the last call came after a pause (see `Dispatch.run`)
        self.last_end = float("-inf")  # when the last call ended, by the dispatch's clock
        self.spent = 0.0  # seconds spent in this bucket's calls since its last probe
        self.interval = _config.PROBE_MIN_SECONDS


class Dispatch:
    """Chooses between a parallel kernel and its serial twin by measured speed.

    Statistics are kept per (kernel, rows, classes) bucket, with rows and
    classes rounded to powers of two, in seconds per element. A new bucket
    runs the two ways in turn until each is timed `SAMPLES` times, then
    uses the way with the smaller median of its last `SAMPLES` timings. The
    first call of each kernel through the dispatch is not timed (it may
    include compiling or loading from the disk cache), nor is a launch that
    wakes the worker threads after the serial twin's first call or at the
    start of a probe, nor the first call after a pause (see `run`).

    The way not chosen is tried again (probed) once the bucket's own calls
    have taken ``interval`` seconds since the last probe: `PROBE_CALLS`
    calls, a majority of its `SAMPLES` timings. A probe that confirms the
    choice doubles the interval, or sets it to 100 times the probe's extra
    cost if that is longer (so probes cost about 1% of fastxent's time), up
    to ``PROBE_MAX_SECONDS``. A probe that overturns the choice, or a
    change of choice because the chosen way slowed down, resets it to
    ``PROBE_MIN_SECONDS``. Both ways give identical bits, so the choice
    never changes a result.

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
        # A pause of a few ms without calls lets the worker threads sleep,
        # and a VM's idle virtual CPUs slow down: the first calls after it
        # ran slow either way (see `_config.PAUSE_SECONDS`), and three slow
        # parallel timings from the start of a run of calls turned the
        # choice to serial for the rest of it. The first call after a
        # pause is therefore not timed, unless the call before it came
        # after a pause too: a caller that works long enough between all
        # its calls pays the wake-up in every call, so it is timed.
        paused = start - stats.last_end > _config.PAUSE_SECONDS
        untimed_pause = paused and not stats.paused
        stats.paused = paused
        if stats.best is None:
            parallel = len(stats.parallel) <= len(stats.serial)  # the ways take turns while learning
        else:
            if stats.probing is None and stats.spent >= stats.interval:
                # The way not chosen was last timed at least an interval ago:
                # a majority of its timings is taken afresh, which bounds
                # its median by the fresh ones.
                stats.probing, stats.probe_left = not stats.best, PROBE_CALLS
                # After a stretch of serial calls the worker threads sleep,
                # and the launch that wakes them is slow (8192 x 10 float32:
                # 125 to 180 us against 52 back to back, after 10 ms of
                # serial calls). Timing it would keep the serial choice even
                # on an idle machine; the launches after it find the threads
                # awake when the calls come back to back, and asleep again
                # when the caller works long enough between calls.
                stats.waking = stats.probing
            parallel = stats.best if stats.probing is None else stats.probing
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
        end = stats.last_end = self.clock()
        stats.spent += end - start
        if kernel not in self._warm:
            self._warm.add(kernel)
            # Loading the serial twin takes long enough (14 to 28 ms at
            # 8192 x 10) for the worker threads to fall asleep.
            stats.waking = kernel is serial_kernel
            return result
        if parallel and stats.waking:
            stats.waking = False
            return result
        if untimed_pause:
            return result
        samples.append((end - start) / n_elements)
        if len(samples) > SAMPLES:
            del samples[0]
        if stats.probing is not None:
            stats.probe_left -= 1
            if stats.probe_left:
                return result
        if len(stats.parallel) == SAMPLES and len(stats.serial) == SAMPLES:
            est_p, est_s = _median(stats.parallel), _median(stats.serial)
            best = est_p <= est_s
            if stats.probing is not None and best != stats.probing:  # the probe lost: the choice stands
                probe_cost = PROBE_CALLS * abs(est_p - est_s) * n_elements
                stats.interval = min(max(2.0 * stats.interval, 100.0 * probe_cost), _config.PROBE_MAX_SECONDS)
                stats.spent = 0.0
            elif stats.probing is not None or best != stats.best:
                # The probe won, or the chosen way slowed down (load, or a
                # passing stall on a noisy machine): the way left behind is
                # tried again soon, not after an interval grown while it
                # was losing.
                stats.interval = _config.PROBE_MIN_SECONDS
                stats.spent = 0.0
            stats.best, stats.probing = best, None
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
