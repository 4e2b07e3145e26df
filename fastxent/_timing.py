"""Interleaved timing: every contender runs once per round, medians over rounds.

The machines this runs on are noisy; interleaving puts all contenders under
the same noise, and ratios of medians are what the reports quote.
"""

import time

import numpy as np

from ._threading import LEARNING_CALLS

# `evict_caches` reads this many bytes of its own. A problem of a few tens
# of MiB can live in a large last-level cache: on a 2-core Xeon VM whose
# L3 is listed as 480 MiB, np.copyto of 8M float32 took 2.3 ms run after
# run, and 4.7 ms once 64 MiB or more of other data had been read in
# between (256 MiB: 4.75 ms, 1 GiB: 4.74 ms). Which of the two a timing
# caught depended on what else the benchmark ran (PyTorch's allocations
# evicted the problem; without PyTorch the copy ran from the cache).
EVICT_BYTES = 256 * 2**20
_evict_buffer = []


def evict_caches():
    """Read EVICT_BYTES of other memory, so that the next call starts with its
    arrays out of the caches: the memory floor is measured from memory."""
    if not _evict_buffer:
        _evict_buffer.append(np.ones(EVICT_BYTES // 8))
    _evict_buffer[0].sum()


# Untimed calls of each contender before any timing. fastxent's dispatch
# learns a new problem shape in its first `LEARNING_CALLS` calls (13: each
# kernel's first call untimed, one launch to wake the threads, five timings
# each way), and the serial twin is compiled or loaded from the disk cache on the
# third (14 to 22 ms at 8192 x 10). With one warm-up call that load fell
# into the calls that choose how many calls make a sample, and a sample of
# 8192 x 10 float32 became 4 calls instead of 64, each sample then
# carrying the slow first call after the other contenders (PyTorch /
# fastxent fell from 15.5 to 9.4-12 in `python -m fastxent bench`).
WARMUP_CALLS = LEARNING_CALLS


def interleaved_medians(contenders, rounds=15, min_seconds=0.002, before=None):
    """Median seconds per call of each callable in the dict ``contenders``.

    Each contender is first called `WARMUP_CALLS` times, untimed.
    ``before``, when given, runs untimed before each timed sample (e.g.
    `evict_caches`); a sample is one call unless a call takes less than
    ``min_seconds``, and then several calls in a row.
    """
    for f in contenders.values():  # warm-up (compilation, caches, page faults, the dispatch's learning)
        for _ in range(WARMUP_CALLS):
            f()
    loops = {}
    for name, f in contenders.items():
        n, t = 1, 0.0
        while True:
            start = time.perf_counter()
            for _ in range(n):
                f()
            t = time.perf_counter() - start
            if t >= min_seconds or n >= 1 << 16:
                break
            n *= 4
        loops[name] = n
    samples = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, f in contenders.items():
            n = loops[name]
            if before is not None:
                before()
            start = time.perf_counter()
            for _ in range(n):
                f()
            samples[name].append((time.perf_counter() - start) / n)
    return {name: float(np.median(s)) for name, s in samples.items()}


# `kernels_in_cache` times the parallel kernels on a problem of this many
# elements (4 MiB of float64 logits and as much output: inside the 32 MiB
# L3 of the machines measured, and large enough that a parallel launch, a
# few microseconds, is a few percent of a call). Over the time per element
# of `np.copyto` from memory it is the arithmetic's share of a call's ratio
# to the copy: where it is already above a target, no change of memory
# traffic reaches that target on that machine, only cheaper arithmetic (a
# bound up to its noise: float64 C = 128, whose rows take the row kernels,
# read 1.58 in cache and 1.44 from memory in medians of three runs). It
# calls the kernels themselves: through the public calls, the dispatch's
# serial timings and probes on a fresh shape moved it by up to 30 %, and a
# loaded machine stalls it (a descheduled worker), so it is read on an
# idle machine. Each kernel is timed on its own, called back to back, so
# that the arrays in cache are its own (interleaving four of them in one
# process moved them by -7 to +10 %, once +30 %: within the noise).
IN_CACHE_ELEMENTS = 1 << 19

# What `kernels_in_cache` times, in its order: the kernels behind
# `cross_entropy_with_grad` (class-index targets, into a buffer and in
# place), `cross_entropy` ("mean"), `log_softmax` and
# `cross_entropy_with_grad` with probability targets.
IN_CACHE_KERNELS = ("fused", "in-place", "loss", "log_softmax", "probs")


def kernels_in_cache(logits, labels, probs, out, rounds=15, kinds=IN_CACHE_KERNELS):
    """Median seconds per element of each parallel kernel named in ``kinds``
    (see `IN_CACHE_KERNELS`), a dict, on the first rows of ``logits`` that
    hold about IN_CACHE_ELEMENTS elements, with the data in cache: no label
    check, no dispatch, mean scale. ``labels`` and ``probs`` are the
    targets of all rows; the kernels write into the same rows of ``out``
    (the in-place kernel overwrites them with a copy of the logits first).
    ``probs`` may be None when "probs" is not asked for."""
    from . import kernels

    rows = max(1, min(logits.shape[0], IN_CACHE_ELEMENTS // max(1, logits.shape[1])))
    x, y, g = logits[:rows], labels[:rows], out[:rows]
    t = None if probs is None else probs[:rows]
    no_row_loss = np.empty(0, logits.dtype)
    scale = 1.0 / rows
    calls = {
        "fused": lambda: kernels.xent_labels_fused(x, y, kernels.NO_WEIGHT, -100, 0.0, scale, g, no_row_loss),
        "in-place": lambda: kernels.xent_labels_fused_inplace(g, y, kernels.NO_WEIGHT, -100, 0.0, scale,
                                                              no_row_loss),
        "loss": lambda: kernels.xent_labels_loss_counted(x, y, kernels.NO_WEIGHT, -100, 0.0, no_row_loss),
        "log_softmax": lambda: kernels.log_softmax_rows(x, g),
        "probs": lambda: kernels.xent_probs_fused(x, t, kernels.NO_WEIGHT, 0.0, scale, g, no_row_loss),
    }
    seconds = {}
    for kind in kinds:
        if kind == "in-place":
            # then called on its own output: gradients of gradients, finite values whose exps and logs cost
            # what the logits' do
            np.copyto(g, x)
        seconds[kind] = interleaved_medians({kind: calls[kind]}, rounds=rounds)[kind] / x.size
    return seconds


def fused_kernel_in_cache(logits, labels, grad, rounds=15):
    """Median seconds per element of `kernels.xent_labels_fused` in cache
    (`kernels_in_cache`), writing into the same rows of ``grad``."""
    return kernels_in_cache(logits, labels, None, grad, rounds, kinds=("fused",))["fused"]
