"""The one place for fastxent's JIT options.

Every kernel module takes its ``@njit`` options from here, so a change of
fast-math policy, caching or the serial/parallel threshold is made once.
"""

import os
import platform


def _llvm_host_cpu():
    """The CPU name LLVM compiles the kernels for (e.g. "znver4", "rocketlake")."""
    from llvmlite import binding

    return binding.get_host_cpu_name()

# Fast-math flags for the max of a row shorter than SUM_LANES, the one
# reduction left to LLVM to vectorize: ``reassoc`` lets it reorder the
# maxima, which cannot change the result (a max is exact). Sums are never
# reassociated: LLVM's order then depends on how a kernel was compiled, and a kernel compiled in-process and
# the same kernel loaded from Numba's disk cache were measured to differ in
# the last bit (kernels.py, "Sums along a row"). ``nnan`` and ``ninf`` are
# absent: with them LLVM may delete the NaN checks and treat the -inf of a
# masked logit as poison.
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
# stands. The interval counts seconds spent in that shape's calls, not of
# the wall clock: under steady load that is one slow call per second of
# calls at most (under 1% of the time at 8192 x 10), when the load goes
# away the parallel kernel is back within two probes, and a caller that
# works between its calls does not pay a probe for every second of its own
# work. FASTXENT_ADAPTIVE=0 always launches in parallel.
ADAPTIVE_DISPATCH = os.environ.get("FASTXENT_ADAPTIVE", "1") != "0"
PROBE_MIN_SECONDS = 0.05
PROBE_MAX_SECONDS = 1.0

# A call that comes more than PAUSE_SECONDS after the last call of its
# shape is not timed by the dispatch (unless the call before it came after
# a pause too). Measured on a 2-core Xeon VM, 8192 x 10 float32: a parallel
# launch 1 ms after the last one took 57 us against 51 back to back, 3 ms
# after 63 us, 10 ms after 132-180 us (the worker threads sleep); after
# 0.2 s of sleep the first calls of a run took 3.5 ms, 0.2 ms, then 68 us
# (parallel kernel) and 1.6 ms, then 0.10 ms (serial twin, 96 us later on).
PAUSE_SECONDS = 0.005

# Problems of at least ADAPTIVE_MAX_ELEMENTS elements always run in
# parallel, untimed: the dispatch's serial runs (learning a new shape, then
# a probe a second) each cost a whole call at serial speed, which at
# 537M elements (53.7M x 10) made the average call 1.9x slower, and at this
# size parallel does not lose under load. Measured (2 cores, float32
# labels, two busy processes beside it, parallel / serial time): 2^22
# elements 0.65 (C = 10) and 2.46 (C = 32000); 2^24: 0.50 and 0.66;
# 2^26: 0.67 and 1.10.
ADAPTIVE_MAX_ELEMENTS = int(os.environ.get("FASTXENT_ADAPTIVE_MAX_ELEMENTS", 2**25))

# Cross-entropy kernels and the softmax primitives lay rows of at most
# TILE_MAX_CLASSES[itemsize] classes out class-major, TILE_ROWS rows at a
# time (one vector lane per row), instead of looping along each short row.
# TILE_ROWS is a multiple of every vector width. The crossover is measured
# (2 threads, 8M elements, both paths interleaved in one process, time over
# np.copyto, tile / row, fused and loss only), with the tiles moved by
# squares of shuffles (`_shuffle`): float32 C = 112: 2.9 / 3.6 and 1.0 /
# 3.2; 128: 2.2 / 2.6 and 1.2 / 2.0; 160: 2.1 / 2.8 and 1.1 / 2.5; 192 (a
# multiple of the row loops' 64 lanes, their best case): 2.2 / 2.0 and
# 1.1 / 1.6, probability targets 3.0 / 2.5; float64 C = 56: 2.0 / 3.1; 64:
# 1.9 / 2.0 and 1.2 / 1.6; 80: 2.0 / 2.8; 96: 2.1 / 2.4 and 1.3 / 2.1.
# (With element-loop transposes the limits were 96 and 48.) A tile's
# scratch is TILE_ROWS * max(TILE_MAX_CLASSES) elements on the stack (80
# KiB in float64, twice that for probability targets).
TILE_ROWS = 64
TILE_MAX_CLASSES = {4: 160, 8: 96}
# Inside the tile limits, rows of at least 2 * ROW_PATH_BLOCK_BYTES whose
# length in bytes is a multiple of ROW_PATH_BLOCK_BYTES take the row path
# instead (float32 C = 128, float64 C = 64 and 96): there the row loops
# run in whole vectors, and every row starts on the same alignment. This is
# the rule that fits the cells measured (2 threads, 8M elements, time over
# np.copyto, tiles -> rows, two processes each unless one value is given)
# on a 2-core Xeon (LLVM: `rocketlake`):
# - taken: float64 C = 64 fused 1.30 / 1.31 -> 1.11 / 1.17, in place 1.18
#   / 1.19 -> 0.98 / 0.99, loss 0.90 / 0.92 -> 0.87 / 0.87, log_softmax
#   1.25 / 1.26 -> 1.01 / 1.03; C = 96 fused 1.42 / 1.45 -> 1.20 / 1.26, in
#   place 1.30 / 1.34 -> 1.14 / 1.14, loss 0.98 / 1.01 -> 0.96 / 1.00,
#   log_softmax 1.40 / 1.44 -> 1.06 / 1.07; float32 C = 128 fused 1.27 /
#   1.30 -> 1.10 / 1.10, in place 1.15 / 1.15 -> 0.96 / 0.93, loss 0.83 /
#   0.84 -> 0.85 / 0.79, log_softmax 1.24 / 1.26 -> 1.15 / 1.12;
# - left on the tiles: float64 C = 32 fused 1.19-1.23 -> 1.90-1.95, C =
#   48 1.24-1.26 -> 1.73-1.74, C = 56 1.32 -> 2.09, C = 80 1.37 -> 1.50;
#   float32 C = 64 1.12-1.38 -> 1.5-2.7, C = 96 1.21 -> 1.65, C = 112
#   1.30 -> 1.46, C = 160 1.29-1.32 -> 1.24-1.25 but loss 0.88 -> 1.05.
# On the Zen 4 machine of the crossover above the tiles won at float64 C =
# 64 (fused 1.9 / 2.0, loss 1.2 / 1.6) and float32 C = 128 (2.2 / 2.6 and
# 1.2 / 2.0), so AMD Zen cores keep the tiles (0: no such rows). The host
# CPU decides, and Numba's disk cache keys its kernels on it too.
ROW_PATH_BLOCK_BYTES = 0 if _llvm_host_cpu().startswith("znver") else 256
# Fewer rows than a tile still take one (padded) tile when there are at
# least TILE_MIN_ROWS_FIXED + TILE_MIN_ROWS_PER_CLASS * C of them: a tile
# costs about 0.3 + 0.045 C us whatever its rows, a row about 0.075 us
# (measured from @njit code, serial, float32; float64 alike): tiles from 4
# rows at C = 2, 8 at C = 10, 16 to 32 at C = 32, about 40 at C = 64.
TILE_MIN_ROWS_FIXED = 2
TILE_MIN_ROWS_PER_CLASS = 0.625
# A full tile of at most SHUFFLE_MAX_CLASSES[itemsize] classes is moved in
# and out by vector shuffles (`_shuffle`), not element loops. Measured
# against the loops in the fused call, the loss and softmax (two threads,
# 8M elements, ratios of interleaved medians): float32 takes 0.45 to 0.9
# of the loops' time at C = 2 to 12, 0.8 to 0.98 at 13 to 15 and 1.1 to
# 1.3 at 16; float64 (8 rows to a vector) takes 0.56 to 0.91 at 2 to 6,
# 0.9 to 1.1 at 7 and 8, and 1.1 to 1.7 from 10. Every C taken costs
# compile time in every tile kernel (cold compile of the tile tests: 84 s
# without shuffles, 110 s with C up to 15 and 8), so the limits stop where
# the gain is clear.
SHUFFLE_MAX_CLASSES = {4: 12, 8: 6}
# From SQUARE_MIN_CLASSES up a full tile moves by squares of shuffles
# (`_shuffle`), whatever C; between the two limits (float64 C = 7) the
# loops. Float32 C = 13 to 15 are narrower than a vector and take masked
# squares (2 threads, 8M elements, time over a copy, loops -> squares: C =
# 13 fused 3.6 -> 2.7, loss 2.3 -> 1.8; C = 15 fused 3.3 -> 2.8). For
# float64 C = 7 they were faster in cache (one thread, 11.0 -> 7.3 ns a
# row) but not from memory (fused 2.2 -> 2.4, loss 1.4 -> 1.7 times a
# copy). Below the shuffle limits masked squares were slower than the
# shuffles (float32 C = 5 to 8, float64 C = 3 to 6) or mixed (float32 C =
# 10: fused 6.1 -> 5.8 ns a row, loss 3.9 -> 4.1).
SQUARE_MIN_CLASSES = {4: 13, 8: 8}

# A tile kernel asks for the memory of a tile ahead while it computes the
# current one (`kernels._prefetch_bytes`, lines of CACHE_LINE bytes): a
# class's share of that tile's logits in each class step of the max loop,
# of its gradient (for writing) in each step of the gradient loop, its
# labels or targets at once. With the hardware prefetchers alone a tile's
# compute and its memory stalls added up. Measured with the next tile
# (2 threads, 8M elements, time over np.copyto, interleaved in one
# process, two processes; before -> after), fused and loss only: float32
# C = 4: 2.3 -> 1.9 and 1.5 -> 1.5; C = 10: 1.5 -> 1.4 and 1.0 -> 1.0;
# C = 32: 1.8 -> 1.1-1.3 and 1.1 -> 0.7; C = 128: 1.7-2.0 -> 1.2-1.4 and
# 1.0-1.2 -> 0.7-0.8; float64 C = 4: 2.5 -> 1.6 and 1.8 -> 1.3; C = 10:
# 1.7-1.9 -> 1.4 and 1.1 -> 1.0; C = 32: 1.8-2.0 -> 1.5 and 1.1 -> 0.9.
# All at once at the start of a tile, the requests slowed tiles of 2.5 KiB
# or more (float64 C = 10: fused 1.9 -> 2.4).
# The tile asked for is the nearest one at least PREFETCH_AHEAD_BYTES of
# logits ahead: for tiles of 2 KiB or more the next one, for smaller tiles
# (float32 C <= 4, float64 C = 2) 2 to 4 tiles ahead. The next tile of
# 512 bytes is too near to hide the memory's latency: asking for it lost
# (float32 C = 2 loss 2.0 -> 2.2 times the copy), so the logits of small
# tiles were left to the hardware. Measured as above, one process, the next
# tile (logits from 1 KiB tiles up) -> 2 KiB ahead (logits at every C),
# fused, loss, probability targets and log_softmax: float32 C = 2: 2.7 ->
# 2.3, 2.2 -> 1.6, 2.7 -> 2.0, 1.7 -> 1.3; C = 4: 2.2 -> 1.7, 1.8 -> 1.2,
# 2.5 -> 1.75, 1.6 -> 1.25; float64 C = 2: 2.7 -> 2.2, 1.5 -> 1.4, 2.8 ->
# 2.1, 1.7 -> 1.3; in a second run float32 C = 2 fused 3.5 -> 3.0 and
# float64 C = 2 loss 1.7 -> 1.2. 4 and 8 KiB ahead measured alike; C >= 8
# (float64 C >= 4) is unchanged, it still asks for the next tile.
PREFETCH_AHEAD_BYTES = 2048
CACHE_LINE = 64

# Vector width the tile kernels ask LLVM for (`_fastmath.wide_vectors`).
# LLVM tunes Intel CPUs with AVX-512 to prefer 256-bit vectors; AMD's
# Zen 4 already gets 512. The tile loops are lane-wise, one row a lane, so
# the width changes the time, never the bits (tests/test_tiles.py).
# Measured on an AVX-512 Xeon (`rocketlake` to LLVM), 256 -> 512 bits:
# one thread in cache, fused, ns a row: float64 C = 2 5.1 -> 3.7, C = 10
# 21.4 -> 16.1, C = 32 64.6 -> 49.9; float32 C = 2 2.9 -> 2.4, C = 10 10.5
# -> 8.8. 2 threads, 8M elements, fused time over np.copyto, two runs each
# in alternating processes: float64 C = 2 1.34, 1.30 -> 1.16, 1.17; C = 10
# 1.39, 1.35 -> 1.23, 1.23; float32 C = 2 1.72, 1.68 -> 1.44, 1.41
# (benchmarks/RESULTS.md, the Xeon sweep). The row path (C above the tile
# limits) was mixed in cache (float64 C = 256 fused 373 -> 322 ns a row,
# loss C = 64 117 -> 121) and is memory-bound from memory, so it keeps
# LLVM's width. 0 leaves the choice to LLVM. On a CPU without AVX-512 the
# request falls back to the widest vectors it has.
VECTOR_BITS = int(os.environ.get("FASTXENT_VECTOR_BITS", 512))

# Outputs of at least STREAM_MIN_BYTES (gradients, softmax) are written by
# non-temporal stores (`_fastmath.stream_copy`) on x86-64 from the tiles of
# at least STREAM_MIN_TILE_BYTES, through a staging buffer in cache. A plain
# store to a line not in cache reads the line first; a non-temporal store
# writes whole lines without reading them, and leaves them out of cache.
# Measured (2 threads, 8M elements, a 2-thread scaled copy by plain and by
# non-temporal stores, time over np.copyto): 0.71-0.76 against 0.55-0.59.
# In the fused kernel (labels, interleaved with plain stores, time over
# np.copyto, plain -> streamed): float32 C = 16 2.55 -> 2.51, C = 32 2.19
# -> 2.12 and 2.28 -> 2.37, C = 64 2.02 -> 2.21, 1.96 -> 1.82 and 1.68 ->
# 1.64, C = 128 1.85 -> 1.80, C = 160 2.02 -> 1.98; float64 C = 8 2.36 ->
# 2.32, C = 16 2.58 -> 1.92, C = 32 2.22 -> 2.03 and 2.45 -> 2.28, C = 96
# 2.39 -> 2.23; log_softmax 7 to 14 % faster, probability targets 2 to 9 %
# (float64 C = 8 3.13 -> 3.18). Smaller tiles did not gain (float32 C = 8,
# 10, 12; float64 C = 5, 6: within 0.05) or lost (float64 C = 4 2.50 ->
# 2.64, C = 2 2.80 -> 3.9; float32 C = 2 2.9 -> 4.8): the stage of a small
# tile is read before its stores have left. Smaller outputs lose what
# reads them next from cache: fused and then a sum over the gradient,
# logits from memory, streamed / plain, float32 C = 32 and float64 C = 16:
# 8 MiB 1.25 and 0.99, 16 MiB 0.91 and 0.97, 32 MiB 0.96 and 0.96, 64 MiB
# 0.96 and 0.94 (plain / plain at 4 MiB, the same run: 1.06 and 1.04). A
# constant, not an environment setting: compiled into the kernels, it would
# not reach kernels loaded from the disk cache.
STREAM_STORES = platform.machine().lower() in ("x86_64", "amd64")
STREAM_MIN_TILE_BYTES = 4096
STREAM_MIN_BYTES = 16 * 2**20
# The row kernels ask for the logits of the nearest row at least
# PREFETCH_AHEAD_BYTES ahead (the next one from 2 KiB up) at the start of a
# row whose bytes lie in PREFETCH_ROW_BYTES; with probability targets the
# target row as well. Measured with the next row, fused and loss only (two
# processes): float32 C = 512 1.3-2.1 -> 1.1-1.3 and 1.6-1.8 -> 1.0,
# C = 1000 1.6-1.8 -> 1.3-1.4 and 1.3-1.5 -> 0.9-1.0; float64 C = 256
# 1.5-2.7 -> 1.1-2.2 and 1.3-2.7 -> 0.9-1.7; probability targets and
# log_softmax gained alike. Float64 C = 512 (4096 bytes) gained in the loss
# but lost with probability targets (1.7-2.4 -> 2.0-2.5) and in log_softmax;
# longer rows lost (float32 C = 4000 fused 1.15 -> 1.4-1.55, C = 32000 1.1
# -> 1.25), and so did asking for the gradient (float64 C = 512 fused 1.2
# -> 1.7). Rows shorter than 2048 bytes did not gain from the next row, as
# tiles of 512 bytes did not from the next tile; 2 KiB ahead they do. Rows
# of 512 bytes to 2 KiB, no prefetch -> 2 KiB ahead, fused, loss,
# probability targets (with the target rows) and log_softmax, one process:
# float32 C = 192 1.7 -> 1.3-1.4, 1.0 -> 0.95, 3.05 -> 2.2, 1.4 -> 1.1-1.2;
# C = 256 1.9 -> 1.1-1.2, 1.1 -> 0.8-0.9, 3.15 -> 1.8 (2.3-2.4 without the
# target rows), 1.6 -> 1.1; float64 C = 128 2.1 -> 1.4-1.45, 1.2 -> 0.9-1.0,
# 3.4 -> 2.0 (2.7), 1.7 -> 1.3-1.45; C = 200 2.0 -> 1.6, 1.5 -> 1.0, 3.25
# -> 2.6. Asking for the target rows from 2 KiB to 4000 bytes moved float32
# C = 1000 within the noise (probability targets 2.1 -> 2.2, 2.4 -> 2.5).
PREFETCH_ROW_BYTES = (512, 4000)

# A group of rows (below) holds at least GROUP_MIN_ELEMENTS logits: a
# group costs about 0.16 us (a call passing a dozen arrays, with their
# reference counts), and with one row a group below 256 rows that was most
# of a small call (32 x 10 from @njit code: 5.9 us, 2.6 us with this
# minimum, 0.9 us on one padded tile).
GROUP_MIN_ELEMENTS = 4096

# Lanes of every sum along a row (kernels.py, "Whole vectors along a row"): the
# order of the additions is fixed by the code, not by the compiler. 64
# lanes (4 vectors of 16 float32, 8 of 8 float64) measured faster than 32
# or 16 at C = 1000 and 32000.
SUM_LANES = 64

# The rows of one call are split into at most this many groups whose loss
# sums are added in group order: a fixed split, so batch totals do not
# depend on the number of threads, and enough groups to balance the threads.
SUM_GROUPS = 256

# `kernels.check_labels` splits the labels into SUM_GROUPS groups of at
# least LABEL_GROUP_MIN labels (a group costs about 25 ns to set up, a
# label about 0.1 ns) and runs in parallel from LABELS_PARALLEL_MIN labels.
# Measured (2 cores, int64 labels, serial / parallel time): 0.53 at 4096
# labels, 0.93 at 16384, 1.5 at 65536, 1.6 to 2.1 from 2^18 to 2^22. (With
# groups of 16 labels at 4096, the set-up cost made the serial pass 6x
# slower.)
LABEL_GROUP_MIN = 2048
LABELS_PARALLEL_MIN = int(os.environ.get("FASTXENT_LABELS_PARALLEL_MIN", 65536))

# Options shared by every kernel. ``error_model="numpy"`` makes float
# division by zero give inf/nan instead of raising, as NumPy does, and avoids
# the zero-check branch in hot loops. ``boundscheck`` is left to Numba's
# global setting so NUMBA_BOUNDSCHECK=1 checks every kernel in CI.
_COMMON = dict(cache=CACHE, error_model="numpy", nogil=True)

# The public functions inside user @njit code (_njit.py): IEEE division, as
# in the kernels; no caching of their own (they compile into the caller).
NJIT_API = dict(error_model="numpy")

PARALLEL = dict(_COMMON, parallel=True, fastmath=set(ELEMENTWISE_FLAGS))
SERIAL = dict(_COMMON, fastmath=set(ELEMENTWISE_FLAGS))
# Row helpers are inlined into the kernels at the LLVM level; their own
# flags travel with their instructions.
ROW_REDUCE = dict(_COMMON, fastmath=set(REDUCE_FLAGS))
ROW_ELEMENTWISE = dict(_COMMON, fastmath=set(ELEMENTWISE_FLAGS))

# `fastxent.linear`: rows per slab of logits are chosen so that a slab
# holds about LINEAR_CHUNK_BYTES (at least LINEAR_CHUNK_MIN_ROWS rows, as
# thinner slabs starve the matrix products). Measured (2 cores, float32,
# N = 2048, D = 512, V = 32000, forward and backward, time relative to the
# unchunked NumPy + fastxent path / peak memory beyond the inputs and the
# gradient outputs relative to the logits; benchmarks/scripts/linear_costs.py):
# 128 rows 1.23 / -; 256 rows 0.97-1.04 / 0.15; 512 rows 0.90-0.91 / 0.27;
# 1024 rows 0.81-0.87 / 0.52. 32 MiB (262 rows here) keeps memory near
# 0.15x for about 5% of time against 512 rows.
LINEAR_CHUNK_BYTES = 32 * 2**20
LINEAR_CHUNK_MIN_ROWS = 64
# The weight gradient of a slab, dlogits.T @ x, is accumulated this many
# classes at a time through a small temporary (2 MiB at D = 512 float32).
# Measured at N = 2048, D = 512, V = 32000 float32, ms per 2048 rows, slabs
# of 256 / 512 / 1024 rows: blocks of 1024 classes 365 / 346 / 364; one
# gemm with beta = 1 into the whole gradient (scipy) 693 / 551 / 466; a
# (V, D) temporary and an add 791 / 580 / 495.
LINEAR_CLASS_BLOCK = 1024

# Numba keys a cached kernel on the text of the file that defines it, so
# an edit of another module compiled into the kernels (the exp and the
# shuffles, these constants) would leave the disk cache serving the old
# machine code, after an upgrade as much as in development (measured: a
# new transpose in _shuffle.py ran only once fastxent/__pycache__ was
# cleared). `key_cache_on_sources` adds the text of these modules to the
# key of every cached kernel.
CACHE_KEY_MODULES = ("kernels.py", "_fastmath.py", "_shuffle.py", "_config.py")


def key_cache_on_sources(namespace):
    """Make every disk-cached dispatcher in ``namespace`` key its cache
    entries on the text of CACHE_KEY_MODULES as well as on its own file."""
    import hashlib

    from numba.core.caching import FunctionCache
    from numba.core.registry import CPUDispatcher

    here = os.path.dirname(os.path.abspath(__file__))
    digest = hashlib.sha256()
    for name in CACHE_KEY_MODULES:
        with open(os.path.join(here, name), "rb") as f:
            digest.update(f.read())
    digest.update(str(VECTOR_BITS).encode())  # set by the environment, compiled into the tiles
    sources = digest.hexdigest()

    class SourcesKeyedCache(FunctionCache):
        def _index_key(self, sig, codegen):
            return (*super()._index_key(sig, codegen), sources)

    for obj in list(namespace.values()):
        if isinstance(obj, CPUDispatcher) and isinstance(obj._cache, FunctionCache):
            obj._cache = SourcesKeyedCache(obj.py_func)
