"""Row access for the Numba kernels: a global row of a shard set as a zero-copy view.

A :class:`~hyperret.storage.shardset.ShardSet` hands a kernel each shard's base
address (``bases: (S,) int64``) and the row offsets (``offsets: (S+1,) int64``);
:func:`row_view` turns a global row number into the ``(dim,)`` float32 view of its
space components inside the (memory-mapped) shard.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

#: Fastmath flags of the float64 sums. Reassociation lets LLVM vectorise them;
#: results stay deterministic for a given build and agree with the NumPy
#: reference to ~1e-15 relative.
FASTMATH = {"reassoc", "contract", "nsz"}


@intrinsic
def _f32_ptr(typingctx, address):
    """An int64 address as a float32 pointer (shard bases, kept alive by ShardSet)."""
    sig = types.CPointer(types.float32)(types.int64)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(types.CPointer(types.float32)))

    return sig, codegen


@intrinsic
def _prefetch(typingctx, address):
    """LLVM's ``prefetch`` (read, high locality) of the cache line at an int64 address; no effect on results."""
    sig = types.void(types.int64)

    def codegen(context, builder, signature, args):
        ptr = builder.inttoptr(args[0], ir.PointerType(ir.IntType(8)))
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [ptr.type, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        builder.call(fn, [ptr, i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return sig, codegen


#: Cache lines of a row a walk prefetches before it computes the row's distance.
PREFETCH_LINES = 48


@njit(cache=True, inline="always")
def prefetch(address, nbytes):
    """Ask the CPU to start loading ``nbytes`` from ``address`` (at most PREFETCH_LINES lines; a hint only)."""
    for line in range(min(PREFETCH_LINES, (nbytes + 63) // 64)):
        _prefetch(address + line * 64)


@njit(cache=True, inline="always")
def prefetch_row(bases, offsets, g, dim):
    """Ask the CPU to start loading global row ``g`` (a hint: no effect on results)."""
    s = np.searchsorted(offsets, g, side="right") - 1
    prefetch(bases[s] + (g - offsets[s]) * dim * 4, dim * 4)


@njit(cache=True, inline="always")
def row_view(bases, offsets, g, dim):
    """Space components of global row ``g`` as a ``(dim,)`` float32 view into its shard."""
    s = np.searchsorted(offsets, g, side="right") - 1
    return numba.carray(_f32_ptr(bases[s] + (g - offsets[s]) * dim * 4), (dim,))


@njit(cache=True, fastmath=FASTMATH)  # no Numba inlining: it would compile the loop without fastmath
def sqnorm(v):
    """``|v|^2`` of a float32 vector ``(D,)``, summed in float64."""
    s = 0.0
    for j in range(v.shape[0]):
        vj = np.float64(v[j])
        s += vj * vj
    return s
