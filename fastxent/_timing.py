"""Interleaved timing: every contender runs once per round, medians over rounds.

The machines this runs on are noisy; interleaving puts all contenders under
the same noise, and ratios of medians are what the reports quote.
"""

import time

import numpy as np


def interleaved_medians(contenders, rounds=15, min_seconds=0.002):
    """Median seconds per call of each callable in the dict ``contenders``."""
    for f in contenders.values():  # warm-up (compilation, caches, page faults)
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
            start = time.perf_counter()
            for _ in range(n):
                f()
            samples[name].append((time.perf_counter() - start) / n)
    return {name: float(np.median(s)) for name, s in samples.items()}
