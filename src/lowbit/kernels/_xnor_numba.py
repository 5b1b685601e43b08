"""The numba back end of `lowbit.kernels.xnor` (imported only when numba is installed)."""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
from numba import types
from numba.extending import intrinsic


@intrinsic
def _popcount64(typingctx: Any, x: Any) -> Any:
    """LLVM's ctpop on a uint64 (one POPCNT instruction on x86-64)."""
    sig = types.uint64(types.uint64)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.ctpop(args[0])

    return sig, codegen


@numba.njit(parallel=True, cache=True, nogil=True)
def _gemm(cols: np.ndarray, wcols: np.ndarray, k: int, out: np.ndarray) -> None:
    n, oh, ow, words = cols.shape
    o = wcols.shape[0]
    for r in numba.prange(n * oh):
        b, i = r // oh, r % oh
        for j in range(ow):
            for c in range(o):
                acc = 0
                for t in range(words):
                    acc += _popcount64(cols[b, i, j, t] ^ wcols[c, t])  # type: ignore[call-arg]
                out[b, i, j, c] = k - 2 * acc


def xnor_gemm(cols: np.ndarray, wcols: np.ndarray, k: int) -> np.ndarray:
    """(N, OH, OW, O) int32 dot products of the bit strings `cols` (N, OH, OW, words) and
    `wcols` (O, words), K valid bits each."""
    out = np.empty((*cols.shape[:3], wcols.shape[0]), dtype=np.int32)
    _gemm(cols.view(np.uint64), np.ascontiguousarray(wcols).view(np.uint64), k, out)
    return out
