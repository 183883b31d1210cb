"""Writing dense rows to memory without reading them first: non-temporal stores for numba.

Densifying a batch of 2,048 x 20,000 genes writes 164 MB, far more than any cache. An
ordinary store first reads each cache line it writes ("read for ownership"), so zeroing a
row and scattering its values moves the row through memory two or three times. Here each row
is built in a small buffer that stays in cache and then streamed out once with non-temporal
32-byte stores, which skip that read. Measured on 2,048 x 20,670 batches with ~1,000
non-zeros per row: 1.2x faster on one thread and 1.25x on two than zeroing and scattering
in place. numba has no such store, so `stream8` emits LLVM's `!nontemporal` store itself.
"""

from __future__ import annotations

import numba
from llvmlite import ir
from numba import types
from numba.extending import intrinsic


@intrinsic
def stream8(typingctx, dst, src, start):
    """dst[start:start+8] = src[start:start+8], one non-temporal store; dst + start must be
    32-byte aligned (LLVM turns a misaligned one into an ordinary store)."""

    def codegen(context, builder, signature, args):
        dst_array = context.make_array(signature.args[0])(context, builder, args[0])
        src_array = context.make_array(signature.args[1])(context, builder, args[1])
        vector = ir.VectorType(ir.FloatType(), 8).as_pointer()
        source = builder.bitcast(builder.gep(src_array.data, [args[2]]), vector)
        target = builder.bitcast(builder.gep(dst_array.data, [args[2]]), vector)
        store = builder.store(builder.load(source, align=4), target, align=32)
        store.set_metadata("nontemporal", builder.module.add_metadata([ir.IntType(32)(1)]))

    return types.void(dst, src, start), codegen


@intrinsic
def store_fence(typingctx):
    """Non-temporal stores are weakly ordered: make them visible before another thread reads
    the batch (a full fence: mfence on x86)."""

    def codegen(context, builder, signature, args):
        builder.fence("seq_cst")

    return types.void(), codegen


@numba.njit(nogil=True, cache=True)
def stream_row(row, stage):  # pragma: no cover
    """row[:] = stage (float32, same length): the unaligned head and tail as ordinary stores,
    the rest streamed."""
    n = row.size
    head = min(((32 - row.ctypes.data % 32) % 32) // 4, n)
    for j in range(head):
        row[j] = stage[j]
    j = head
    while j + 8 <= n:
        stream8(row, stage, j)
        j += 8
    for t in range(j, n):
        row[t] = stage[t]
