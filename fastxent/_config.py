"""The one place for fastxent's JIT options.

Every kernel module takes its ``@njit`` options from here, so a change of
fast-math policy, caching or the serial/parallel threshold is made once.
"""

import os

# Fast-math flags for loops that *reduce* (sum of exps, max, dot products).
# ``reassoc`` is what lets LLVM vectorize a floating-point sum. ``nnan`` and
# ``ninf`` are deliberately absent: with them LLVM may delete the NaN checks
# and treat the -inf of a masked logit as poison, changing results.
# ``contract`` is absent too: together with ``reassoc`` it lets LLVM fuse
# the products of a dot product into FMAs in an order that depends on the
# function the loop is inlined into. Measured with Numba 0.60 (LLVM 14):
# the parallel kernels and their serial twins then differed in the last bit
# of some label-smoothed losses; without ``contract`` they agree.
REDUCE_FLAGS = frozenset({"reassoc", "nsz", "arcp", "afn"})

# Flags for element-wise loops and per-row scalar arithmetic. No ``reassoc``:
# it would let LLVM rewrite ``(x - max) - log(s)`` as ``x - (max + log(s))``,
# which loses everything when |x| ~ 1e30. No ``contract`` either: whether
# LLVM fuses a multiply-add into an FMA depends on the surrounding code, so
# a parallel kernel and its serial twin could round differently, and results
# must not depend on the thread count.
ELEMENTWISE_FLAGS = frozenset({"nsz", "arcp"})

# The polynomial exp: FMAs make the Cody-Waite reduction and Horner steps
# more accurate; its instructions are its own, so fusion does not depend on
# the caller. No ``reassoc``: it would undo the Cody-Waite split.
EXP_FLAGS = frozenset({"nsz", "contract", "arcp"})

# Compiled kernels are cached on disk next to the sources; set
# FASTXENT_CACHE=0 to compile in memory only (e.g. on a read-only install).
CACHE = os.environ.get("FASTXENT_CACHE", "1") != "0"

# Problems with fewer elements (rows x classes) than this, or a single row,
# run the serial twin of a kernel: a parallel launch costs several
# microseconds. Measured (2 cores, float32, labels): the parallel kernel is
# 2.4x faster than the serial one from 4096 elements at C = 10, 1.4x at
# C = 100, and breaks even at 8192 elements at C = 1000.
PARALLEL_MIN_ELEMENTS = int(os.environ.get("FASTXENT_PARALLEL_MIN_ELEMENTS", 8192))

# Above that threshold the dispatch times the parallel kernel and its serial
# twin per problem shape and runs the faster (``_threading.Dispatch``): on a
# loaded machine a parallel launch can wait a scheduler time slice for a
# descheduled worker. The way not chosen is tried again after an interval
# that doubles from PROBE_MIN_SECONDS to PROBE_MAX_SECONDS while the choice
# stands: under steady load that is one slow call a second at most (under 1%
# of the time at 8192 x 10), and when the load goes away the parallel kernel
# is back within two probes. FASTXENT_ADAPTIVE=0 always launches in parallel.
ADAPTIVE_DISPATCH = os.environ.get("FASTXENT_ADAPTIVE", "1") != "0"
PROBE_MIN_SECONDS = 0.05
PROBE_MAX_SECONDS = 1.0

# Options shared by every kernel. ``error_model="numpy"`` makes float
# division by zero give inf/nan instead of raising, as NumPy does, and avoids
# the zero-check branch in hot loops. ``boundscheck`` is left to Numba's
# global setting so NUMBA_BOUNDSCHECK=1 checks every kernel in CI.
_COMMON = dict(cache=CACHE, error_model="numpy", nogil=True)

PARALLEL = dict(_COMMON, parallel=True, fastmath=set(ELEMENTWISE_FLAGS))
SERIAL = dict(_COMMON, fastmath=set(ELEMENTWISE_FLAGS))
# Row helpers are inlined into the kernels at the LLVM level; their own
# flags travel with their instructions.
ROW_REDUCE = dict(_COMMON, fastmath=set(REDUCE_FLAGS))
ROW_ELEMENTWISE = dict(_COMMON, fastmath=set(ELEMENTWISE_FLAGS))
