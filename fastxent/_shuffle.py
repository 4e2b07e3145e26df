"""Tile transposes by vector shuffles, for the class-major tile kernels.

A tile kernel turns TILE_ROWS rows of C classes into the class-major
layout ``T[c * TILE_ROWS + b] = x[r0 + b, c]`` and the gradient back. As
plain Numba loops, with C known only at run time, both transposes run one
element at a time: no vectorizer handles a store (or load) stride that is
not a constant, and they were half the time of the tile path (see README,
Performance).

Here each transpose is LLVM IR: a block of ``LANES`` rows is one wide
load (``LANES * C`` contiguous elements), and ``shufflevector`` with a
constant mask picks each class's ``LANES`` values out of it (the store is
the mirror image). The masks need C at compile time, so the IR holds one
such block for every C in ``SHUFFLE_CLASSES`` behind a ``switch`` on the
run-time C. Measured (one thread, float32 tiles of 64 rows held in cache,
ns per row for the load and the store together, shuffles against the
run-time loops): C = 2: 0.29 / 3.2; 4: 0.81 / 6.3; 8: 2.6 / 9.7;
10: 4.4 / 17.9; 16: 8.9 / 14.6. The shuffles' cost grows as C^2 (each
output vector draws from C input vectors), so past a measured C the
loops win in the kernels (``_config.SHUFFLE_MAX_CLASSES``).

From ``_config.SQUARE_MIN_CLASSES`` up a tile moves instead by squares of
LANES rows x LANES classes: LANES row loads, an in-register transpose of
log2(LANES) rounds of shuffles, LANES stores, whatever C. Float32 rows of
13 to 15 classes are narrower than a vector; the last row of a tile is
moved by a masked load and store (`_square_blocks`). In the kernels (one
thread, tiles in cache, ns per row, loops -> squares): float32 C = 13
fused 15.5 -> 6.7, loss 9.7 -> 4.9. Float64 C = 7 keeps the loops
(faster in cache, slower from memory), and below the shuffle limits the
shuffles win (float32 C = 5: fused 3.2 against 4.4; float64 C = 3: 3.7 /
4.8). Measured the
same way (load and store, ns per row, squares / loops): float32 C = 16:
1.4 / 7.9; 32: 2.7 / 15.0; 64: 6.3 / 29.5; 96: 10.5 / 44.0; float64 16:
2.3 / 9.0; 32: 4.2 / 15.4. In the kernels (fused, 2 threads, 8M elements,
time over a copy, loops -> squares): float32 C = 16: 4.1 -> 2.7, 32: 3.8
-> 2.6, 64: 3.9 -> 2.9; float64 32: 2.3 -> 2.1, 48: 2.2 -> 2.0. The
squares go row group by row group, each through all its class blocks:
block by block over the whole tile (strided through memory) they were
slower than the loops in float64 (C = 32: 2.5 -> 3.1).

Both are pure data movement: results are the bits the loops give.
"""

import numpy as np
from llvmlite import binding as llvm_binding
from llvmlite import ir
from numba import config, types
from numba.core import cgutils
from numba.extending import intrinsic

from . import _config

#: Rows moved by one wide load or store, by element size: a 64-byte
#: vector (AVX-512; narrower machines split it, still correct).
LANES = {4: 16, 8: 8}
#: The class counts with a shuffle transpose, by element size (measured:
#: see ``_config.SHUFFLE_MAX_CLASSES``); others take the caller's loops.
SHUFFLE_CLASSES = {size: tuple(range(2, top + 1)) for size, top in _config.SHUFFLE_MAX_CLASSES.items()}


def _mask(values):
    return ir.Constant(ir.VectorType(ir.IntType(32), len(values)), list(values))


def _concat(builder, parts):
    """One vector holding ``parts`` (vectors of one element type) end to end."""
    while len(parts) > 1:
        joined = []
        for k in range(0, len(parts) - 1, 2):
            a, b = parts[k], parts[k + 1]
            p, q = a.type.count, b.type.count
            if q < p:  # shufflevector takes operands of one type: widen b
                b = builder.shuffle_vector(b, ir.Constant(b.type, ir.Undefined), _mask(list(range(q)) + [q - 1] * (p - q)))
            joined.append(builder.shuffle_vector(a, b, _mask(list(range(p)) + list(range(p, p + q)))))
        if len(parts) % 2:
            joined.append(parts[-1])
        parts = joined
    return parts[0]


def _switch_on_classes(builder, n_classes, classes, emit):
    """``emit(C)`` in a block per C of SHUFFLE_CLASSES, chosen by the run-time
    ``n_classes``; returns an i1 that is true when a block ran."""
    fn = builder.function
    default = fn.append_basic_block("shuffle.none")
    end = fn.append_basic_block("shuffle.end")
    switch = builder.switch(n_classes, default)
    done = []
    for c in classes:
        block = fn.append_basic_block(f"shuffle.c{c}")
        switch.add_case(ir.Constant(n_classes.type, c), block)
        builder.position_at_end(block)
        emit(c)
        done.append(builder.block)
        builder.branch(end)
    builder.position_at_end(default)
    builder.branch(end)
    builder.position_at_end(end)
    ran = builder.phi(ir.IntType(1))
    ran.add_incoming(ir.Constant(ir.IntType(1), 0), default)
    for block in done:
        ran.add_incoming(ir.Constant(ir.IntType(1), 1), block)
    return ran


def _check_types(rows, row0, tile, tile_rows):
    return (
        isinstance(rows, types.Array) and rows.ndim == 2
        and isinstance(tile, types.Array) and tile.ndim == 1 and tile.dtype == rows.dtype
        and isinstance(rows.dtype, types.Float) and isinstance(row0, types.Integer)
        and isinstance(tile_rows, types.IntegerLiteral) and tile_rows.literal_value % max(LANES.values()) == 0
    )


def _returns_false(context, builder, sig, args):
    return ir.Constant(ir.IntType(1), 0)


def _block_to_tile(builder, rows_block, tile_at, c, lanes, lane_ty, block_ty, align):
    """Load ``lanes`` rows as one vector; store each class's lanes to the tile."""
    block = builder.load(builder.bitcast(rows_block, block_ty.as_pointer()), align=align)
    for k in range(c):
        column = builder.shuffle_vector(block, ir.Constant(block_ty, ir.Undefined), _mask(range(k, lanes * c, c)))
        builder.store(column, builder.bitcast(tile_at(k), lane_ty.as_pointer()), align=align)


def _tile_to_block(builder, rows_block, tile_at, c, lanes, lane_ty, block_ty, align):
    """Load each class's lanes from the tile; store ``lanes`` rows as one vector."""
    columns = [builder.load(builder.bitcast(tile_at(k), lane_ty.as_pointer()), align=align) for k in range(c)]
    joined = _concat(builder, columns)  # class-major: element k * lanes + b
    block = builder.shuffle_vector(joined, ir.Constant(block_ty, ir.Undefined),
                                   _mask([k * lanes + b for b in range(lanes) for k in range(c)]))
    builder.store(block, builder.bitcast(rows_block, block_ty.as_pointer()), align=align)


def _square_transpose(builder, vectors):
    """The transpose of a square of ``len(vectors)`` vectors of as many lanes
    (a power of two): lane l of output r is lane r of input l.

    Recursive block swaps: at half-width h, the rows i and i + h (bit h of i
    clear) trade the h-lane blocks that lie off the diagonal of their 2h x 2h
    block. log2(lanes) rounds of ``lanes`` two-operand shuffles, which LLVM
    emits as unpack and 128-bit lane shuffles."""
    lanes = len(vectors)
    rows = list(vectors)
    h = lanes // 2
    while h >= 1:
        low = [(l // (2 * h)) * 2 * h + l % (2 * h) + (0 if l % (2 * h) < h else lanes - h) for l in range(lanes)]
        high = [(l // (2 * h)) * 2 * h + l % (2 * h) + (h if l % (2 * h) < h else lanes) for l in range(lanes)]
        for i in range(lanes):
            if i & h:
                continue
            a, b = rows[i], rows[i + h]
            rows[i], rows[i + h] = builder.shuffle_vector(a, b, _mask(low)), builder.shuffle_vector(a, b, _mask(high))
        h //= 2
    return rows


def _row_mask(builder, n_classes, lanes):
    """<lanes x i1>: lane k is on when k < n_classes."""
    counts = ir.Constant(ir.VectorType(n_classes.type, lanes), list(range(lanes)))
    limit = builder.insert_element(ir.Constant(counts.type, ir.Undefined), n_classes, ir.Constant(ir.IntType(32), 0))
    limit = builder.shuffle_vector(limit, ir.Constant(counts.type, ir.Undefined), _mask([0] * lanes))
    return builder.icmp_unsigned("<", counts, limit)


def _masked_name(op, lane_ty):
    """The mangled name of ``llvm.masked.<op>`` on ``lane_ty``: LLVM 17 and
    later name the (opaque) pointer "p0", earlier ones its pointee too."""
    vector = f"v{lane_ty.count}{'f32' if lane_ty.element == ir.FloatType() else 'f64'}"
    return f"llvm.masked.{op}.{vector}.p0" + ("" if _OPAQUE_POINTERS else vector)


_OPAQUE_POINTERS = llvm_binding.llvm_version_info[0] >= 17


def _masked_load(builder, pointer, mask, lane_ty, align):
    """``llvm.masked.load``: the lanes of ``mask`` from ``pointer``, 0 elsewhere;
    memory under the other lanes is not touched."""
    i32 = ir.IntType(32)
    fnty = ir.FunctionType(lane_ty, [pointer.type, i32, mask.type, lane_ty])
    fn = cgutils.get_or_insert_function(builder.module, fnty, _masked_name("load", lane_ty))
    return builder.call(fn, [pointer, ir.Constant(i32, align), mask, ir.Constant(lane_ty, None)])


def _masked_store(builder, vector, pointer, mask, align):
    """``llvm.masked.store``: the lanes of ``mask`` to ``pointer``; memory under
    the other lanes is not touched."""
    i32 = ir.IntType(32)
    lane_ty = vector.type
    fnty = ir.FunctionType(ir.VoidType(), [lane_ty, pointer.type, i32, mask.type])
    fn = cgutils.get_or_insert_function(builder.module, fnty, _masked_name("store", lane_ty))
    builder.call(fn, [vector, pointer, ir.Constant(i32, align), mask])


def _move_square(builder, row_at, class_at, lanes, lane_ty, align, to_tile, last_row_mask=None):
    """One square: ``lanes`` row vectors <-> ``lanes`` class vectors. With
    ``last_row_mask`` the last row is read or written by a masked access."""
    if to_tile:
        square = [builder.load(row_at(k), align=align) for k in range(lanes)] if last_row_mask is None else (
            [builder.load(row_at(k), align=align) for k in range(lanes - 1)]
            + [_masked_load(builder, row_at(lanes - 1), last_row_mask, lane_ty, align)])
        columns = _square_transpose(builder, square)
        for k in reversed(range(lanes)):  # the real class C - 1 last, over any clamped padding (narrow rows)
            builder.store(columns[k], class_at(k), align=align)
    else:
        rows_out = _square_transpose(builder, [builder.load(class_at(k), align=align) for k in range(lanes)])
        for k in range(lanes - 1):  # in row order: a narrow row's spill is mended by the next row's store
            builder.store(rows_out[k], row_at(k), align=align)
        if last_row_mask is None:
            builder.store(rows_out[lanes - 1], row_at(lanes - 1), align=align)
        else:
            _masked_store(builder, rows_out[lanes - 1], row_at(lanes - 1), last_row_mask, align)


def _square_blocks(builder, rows, tile, row0, n_rows, lanes, lane_ty, align, to_tile):
    """Move a tile by squares of ``lanes`` rows x ``lanes`` classes.

    The class blocks start at 0, lanes, 2 lanes, ... and the last one at
    C - lanes, overlapping the one before when lanes does not divide C
    (C >= lanes): every load and store stays inside its row, and the classes
    moved twice get the same values twice. One loop over the blocks and
    one over the groups of rows, whatever C.

    Rows narrower than a vector (C < lanes) are one block, and a full-width
    access to a row runs into the next one. Inside the tile that is
    harmless: a load reads the next row, and a store's spill is overwritten
    by the next row's store, which follows it. Only the tile's last row,
    whose next row may be another thread's or past the array, is read and
    written by a masked access of its C elements. (All masked, the tile
    moves were slower than the element loops from memory, float64 C = 7
    fused 11 -> 16 ns a row, and a masked store of a whole row slowed the
    squares of C >= lanes too: masked accesses seem not to train the
    hardware prefetchers, and a masked store to a line not in cache is
    slow.) The square's lanes from C up are padding: their class addresses
    are clamped to C - 1, so nothing outside the tile's C class vectors is
    touched either."""
    intp = row0.type
    n_classes = cgutils.unpack_tuple(builder, rows.shape)[1]
    step = ir.Constant(intp, lanes)
    n_groups = ir.Constant(intp, n_rows // lanes)

    def row_addresses(lane0, col0):
        def row_at(b):  # &rows[row0 + lane0 + b, col0]
            r = builder.add(builder.add(row0, lane0), ir.Constant(intp, b))
            return builder.bitcast(builder.gep(rows.data, [builder.add(builder.mul(r, n_classes), col0)]),
                                   lane_ty.as_pointer())

        return row_at

    def class_addresses(lane0, col0, clamp):
        def class_at(k):  # &tile[min(col0 + k, C - 1) * n_rows + lane0]
            c = builder.add(col0, ir.Constant(intp, k))
            if clamp:
                c = builder.select(builder.icmp_unsigned("<", c, n_classes), c, builder.sub(n_classes, ir.Constant(intp, 1)))
            return builder.bitcast(builder.gep(tile.data, [builder.add(builder.mul(c, ir.Constant(intp, n_rows)), lane0)]),
                                   lane_ty.as_pointer())

        return class_at

    narrow_rows = _config.SQUARE_MIN_CLASSES[align] < lanes  # align is the element size
    is_narrow = builder.icmp_unsigned("<", n_classes, step) if narrow_rows else ir.Constant(ir.IntType(1), 0)
    with builder.if_else(is_narrow) as (narrow, wide):
        with narrow:  # a constant false branch, which LLVM drops, when no C below lanes takes squares
            if narrow_rows:
                zero = ir.Constant(intp, 0)
                with cgutils.for_range(builder, builder.sub(n_groups, ir.Constant(intp, 1))) as groups:
                    lane0 = builder.mul(groups.index, step)
                    _move_square(builder, row_addresses(lane0, zero), class_addresses(lane0, zero, True), lanes, lane_ty,
                                 align, to_tile)
                lane0 = ir.Constant(intp, n_rows - lanes)
                _move_square(builder, row_addresses(lane0, zero), class_addresses(lane0, zero, True), lanes, lane_ty,
                             align, to_tile, _row_mask(builder, n_classes, lanes))
        with wide:
            n_blocks = builder.udiv(builder.add(n_classes, ir.Constant(intp, lanes - 1)), step)
            last = builder.sub(n_classes, step)
            with cgutils.for_range(builder, n_groups) as groups:
                lane0 = builder.mul(groups.index, step)
                with cgutils.for_range(builder, n_blocks) as blocks:
                    start = builder.mul(blocks.index, step)
                    col0 = builder.select(builder.icmp_unsigned(">", start, last), last, start)
                    _move_square(builder, row_addresses(lane0, col0), class_addresses(lane0, col0, False), lanes,
                                 lane_ty, align, to_tile)


def _transpose_intrinsic(move_block, to_tile, doc):
    """An intrinsic ``(rows, row0, tile, tile_rows) -> bool`` that moves a tile
    by ``move_block`` for each group of LANES rows when C is in
    SHUFFLE_CLASSES, by squares (`_square_blocks`) when C >= LANES."""

    def typer(typingctx, rows, row0, tile, tile_rows):
        if not _check_types(rows, row0, tile, tile_rows):
            return None
        sig = types.boolean(rows, row0, tile, tile_rows)
        if rows.layout != "C":  # rows of unknown stride: the caller's loops
            return sig, _returns_false
        n_rows = tile_rows.literal_value

        def codegen(context, builder, sig, args):
            rows = context.make_array(sig.args[0])(context, builder, args[0])
            tile = context.make_array(sig.args[2])(context, builder, args[2])
            n_classes = cgutils.unpack_tuple(builder, rows.shape)[1]
            row0 = context.cast(builder, args[1], sig.args[1], types.intp)
            elt = context.get_data_type(sig.args[0].dtype)
            size = align = context.get_abi_sizeof(elt)
            lanes = LANES[size]
            lane_ty = ir.VectorType(elt, lanes)

            def emit(c):
                # A loop, not unrolled: LLVM's compile time grows with the IR,
                # and every kernel inlines this once per C.
                block_ty = ir.VectorType(elt, lanes * c)
                intp = row0.type
                with cgutils.for_range(builder, ir.Constant(intp, n_rows // lanes)) as loop:
                    lane0 = builder.mul(loop.index, ir.Constant(intp, lanes))
                    first = builder.mul(builder.add(row0, lane0), ir.Constant(intp, c))

                    def tile_at(k):
                        return builder.gep(tile.data, [builder.add(lane0, ir.Constant(intp, k * n_rows))])

                    move_block(builder, builder.gep(rows.data, [first]), tile_at, c, lanes, lane_ty, block_ty, align)

            shuffled = _switch_on_classes(builder, n_classes, SHUFFLE_CLASSES[size], emit)
            smallest = ir.Constant(n_classes.type, _config.SQUARE_MIN_CLASSES[size])
            wide = builder.and_(builder.not_(shuffled), builder.icmp_signed(">=", n_classes, smallest))
            with builder.if_then(wide):
                _square_blocks(builder, rows, tile, row0, n_rows, lanes, lane_ty, align, to_tile)
            return builder.or_(shuffled, wide)

        return sig, codegen

    typer.__doc__ = doc
    return intrinsic(typer)


if not config.DISABLE_JIT:
    rows_to_tile = _transpose_intrinsic(_block_to_tile, True, """\
``tile[c * tile_rows + b] = rows[row0 + b, c]`` for b < tile_rows, by
shuffles, if C is in SHUFFLE_CLASSES; returns whether it did.

Unchecked: rows ``row0 .. row0 + tile_rows - 1`` must exist and ``tile``
hold ``C * tile_rows`` elements (``tile_rows``, a literal int, is a
multiple of LANES).
""")
    tile_to_rows = _transpose_intrinsic(_tile_to_block, False, """\
``rows[row0 + b, c] = tile[c * tile_rows + b]`` for b < tile_rows, by
shuffles, if C is in SHUFFLE_CLASSES; returns whether it did.

Unchecked, as `rows_to_tile`.
""")

else:  # NUMBA_DISABLE_JIT=1 (coverage runs): the same moves in NumPy

    def rows_to_tile(rows, row0, tile, tile_rows):
        """``tile[c * tile_rows + b] = rows[row0 + b, c]`` if C is in SHUFFLE_CLASSES."""
        c = rows.shape[1]
        if c not in SHUFFLE_CLASSES[rows.itemsize] and c < _config.SQUARE_MIN_CLASSES[rows.itemsize]:
            return False
        tile[: c * tile_rows] = np.ascontiguousarray(rows[row0 : row0 + tile_rows].T).reshape(-1)
        return True

    def tile_to_rows(rows, row0, tile, tile_rows):
        """``rows[row0 + b, c] = tile[c * tile_rows + b]`` if C is in SHUFFLE_CLASSES."""
        c = rows.shape[1]
        if c not in SHUFFLE_CLASSES[rows.itemsize] and c < _config.SQUARE_MIN_CLASSES[rows.itemsize]:
            return False
        rows[row0 : row0 + tile_rows] = tile[: c * tile_rows].reshape(c, tile_rows).T
        return True
