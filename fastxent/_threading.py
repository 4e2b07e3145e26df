"""When fastxent may launch a parallel kernel.

Two hazards of Numba's threading layers decide this:

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
"""

import os
import threading

import numba

from . import _config

_lock = threading.Lock()
_in_forked_child = False


def _after_fork_in_child():
    global _lock, _in_forked_child
    _lock = threading.Lock()
    _in_forked_child = True


os.register_at_fork(after_in_child=_after_fork_in_child)


def _layer_usable_here():
    if not _in_forked_child:
        return True
    try:
        return numba.threading_layer() != "omp"
    except ValueError:  # the parent never launched threads
        return True


def run(parallel_kernel, serial_kernel, n_elements, *args):
    """Call the parallel kernel when it pays off and is safe, else its twin.

    ``args[0]`` is the 2-D array whose rows the kernel splits between threads.
    """
    if (
        n_elements >= _config.PARALLEL_MIN_ELEMENTS
        and args[0].shape[0] > 1
        and numba.get_num_threads() > 1
        and _layer_usable_here()
    ):
        lock = _lock
        if lock.acquire(blocking=False):
            try:
                return parallel_kernel(*args)
            finally:
                lock.release()
    return serial_kernel(*args)
