"""Batched small matrix products (attention's q kᵀ and P v): NumPy/BLAS reference and a Numba loop.

Measured verdict: **BLAS wins; the Numba version is not used.** Attention multiplies B·H = 256 small
matrices per call at the 6×64 model's size ((65, 32) @ (32, 65)). NumPy's `matmul` on stacked arrays
calls the BLAS sgemm once per matrix; OpenBLAS's register-blocked FMA micro-kernel runs even these
small products at ~55 GFLOP/s on one core of the benchmark machine. The triple loop below, compiled
by Numba without fastmath (so no FMA contraction and no reassociation of sums), reaches ~15-20 GFLOP/s
per core: with `prange` over the batch on 2 cores it is still slower than BLAS on one. So the attention
kernels (`tinymoe.kernels.attention`) keep the products in BLAS and fuse only what lies between them.
`python bench/kernels.py` re-measures both ("batched_matmul" rows of bench/results/kernels.json).

This module is kept for that measurement and for teaching: the loop order i, k, j makes the innermost
loop an axpy over a contiguous row of b and of the output, which is the order a compiler can vectorize
without reassociating any sum.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


def batched_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a (G, M, K) @ b (G, K, N) -> (G, M, N): NumPy, one BLAS call per matrix."""
    return np.matmul(a, b)


@njit(cache=True, fastmath=False, nogil=True, parallel=True)
def _batched_matmul_loops(a, b, out):
    for g in prange(a.shape[0]):
        for i in range(a.shape[1]):
            row = out[g, i]
            row[:] = 0
            for k in range(a.shape[2]):
                aik = a[g, i, k]
                for j in range(b.shape[2]):  # axpy: row += a[g, i, k] * b[g, k, :]
                    row[j] += aik * b[g, k, j]


def batched_matmul_numba(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Same as `batched_matmul` for 3-D a, b of one float dtype (see the module docstring: slower)."""
    if a.ndim != 3 or b.ndim != 3 or a.shape[0] != b.shape[0] or a.shape[2] != b.shape[1]:
        raise ValueError(f"batched_matmul_numba: need a (G, M, K) and b (G, K, N), got {a.shape} and {b.shape}")
    out = np.empty((a.shape[0], a.shape[1], b.shape[2]), dtype=np.result_type(a, b))
    _batched_matmul_loops(a, b, out)
    return out
