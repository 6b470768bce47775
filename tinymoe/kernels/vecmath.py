"""exp for Numba kernels, written so the compiler can vectorize it (8 float32 lanes per AVX2 instruction).

Why this file exists: inside a jitted loop, `np.exp` of a float32 calls the C library's `expf` once per
element. The call cannot be vectorized, and it costs ~3 ns, three times NumPy's own SIMD exp, so a fused
kernel that calls it (softmax, GELU) would lose to the multi-pass NumPy reference it is meant to beat.
`exp` below, for float32, is only multiplications, additions and integer bit operations, which LLVM
turns into vector instructions: measured ~0.9 ns per element on one core, with a relative error below
1.2e-7 (float32 has 6e-8 resolution; NumPy's float32 exp is within 2e-7).

The method is the textbook one (range reduction, a short polynomial, then a power of two):

    exp(v) = 2^n · exp(t),   n = round(v / ln 2),   t = v - n ln 2,   |t| <= ln(2)/2 ≈ 0.347

- exp(t) on that small interval is its Taylor series to degree 7; the first omitted term is
  0.347^8 / 8! < 5e-9, far below float32 resolution.
- n ln 2 is subtracted in two pieces (Cody–Waite): LN2_HI has its low mantissa bits zero, so n·LN2_HI
  is exact for the |n| <= 127 that occur, and LN2_LO adds back the rest of ln 2.
- 2^n is built directly from its bit pattern: a float32 with biased exponent n + 127 and zero mantissa.
  Where that exponent does not exist, 2^n is built in two factors: below n = -126 (results under
  1.2e-38, float32's subnormal range) as 2^(n+64) · 2^-64, and at n = 128 (results above 1.7e38) as
  2^127 · 2; the last multiplication rounds to the right subnormal number, or overflows to inf.
- Inputs are clamped to [-104, 89] before the reduction: below -104 the result is exactly 0 (as in
  NumPy: exp(-104) is under half the smallest subnormal), above 88.73 it is inf. NaN stays NaN.

float64 (used for gradient checks, where exactness matters and speed does not) keeps `np.exp`.

Developer's note on Numba's cache (cache=True): a cached kernel is recompiled when ITS OWN source file
changes, not when a function it calls from another file does. After editing this file, delete the
cached kernels (`find tinymoe -name "*.nb[ic]" -delete`), or the kernels of activation.py, norm.py,
softmax.py, attention.py and expert.py keep running the old exp and sum_f64.
Under NUMBA_DISABLE_JIT=1 `exp` is plain `np.exp`.
"""

from __future__ import annotations

import numpy as np
from numba import njit, types
from numba.extending import overload

LOG2_E = np.float32(1.4426950408889634)  # 1 / ln 2
LN2_HI = np.float32(0.693145751953125)  # ln 2 rounded to 16 significant bits: n * LN2_HI is exact
LN2_LO = np.float32(1.4286068203094172e-06)  # ln 2 - LN2_HI
EXP_MAX = np.float32(89.0)  # exp overflows float32 above 88.73: the clamp keeps n <= 128
EXP_UNDERFLOW = np.float32(-104.0)  # exp(v) rounds to 0 in float32 below this
TWO_TO_MINUS_64 = np.float32(2.0**-64)
# Taylor coefficients 1/k! of exp(t), highest degree first (Horner order), as float32 constants so the
# polynomial is evaluated in float32 (a Python float literal would make Numba compute in float64).
_TAYLOR = tuple(np.float32(1.0 / np.prod(np.arange(1, k + 1), dtype=np.float64)) for k in range(7, -1, -1))
_C7, _C6, _C5, _C4, _C3, _C2, _C1, _C0 = _TAYLOR


@njit(cache=True, fastmath=False, nogil=True)
def exp_f32(v):
    """exp(v) for one float32 number v, vectorizable (see the module docstring for the method)."""
    w = min(max(v, EXP_UNDERFLOW), EXP_MAX)
    n = np.floor(w * LOG2_E + np.float32(0.5))  # nearest integer to w / ln 2, as a float32
    t = (w - n * LN2_HI) - n * LN2_LO  # w - n ln 2, |t| <= 0.347
    p = _C7
    p = p * t + _C6
    p = p * t + _C5
    p = p * t + _C4
    p = p * t + _C3
    p = p * t + _C2
    p = p * t + _C1
    p = p * t + _C0  # exp(t)
    # 2^n as one float32 when n is a normal exponent (-126 <= n <= 127), else as 2^exponent · factor.
    exponent = np.int32(n)
    factor = np.float32(1.0)
    if exponent < -126:
        exponent += np.int32(64)
        factor = TWO_TO_MINUS_64
    elif exponent > 127:
        exponent -= np.int32(1)
        factor = np.float32(2.0)
    two_to_exponent = np.int32((exponent + np.int32(127)) << np.int32(23)).view(np.float32)  # its bits
    result = p * two_to_exponent * factor
    if v <= EXP_UNDERFLOW:
        result = np.float32(0.0)
    if v != v:  # NaN in, NaN out
        result = v
    return result


def exp(v):
    """exp(v) for one number. In jitted code: `exp_f32` for float32, `np.exp` for other types.

    As plain Python (NUMBA_DISABLE_JIT=1, or called from the interpreter) it is `np.exp`.
    """
    return np.exp(v)


@overload(exp, jit_options={"cache": True, "nogil": True})
def _exp_for_numba(v):
    # Chosen at compile time from the argument's type: each specialization of a kernel gets one.
    if v == types.float32:
        return lambda v: exp_f32(v)
    return lambda v: np.exp(v)


@njit(cache=True, fastmath=False, nogil=True)
def sum_f64(a):
    """sum(a) of a 1-D array, accumulated in float64 in 8 independent lanes.

    A single running sum makes every addition wait for the previous one (4 cycles each); without
    fastmath the compiler may not reorder the additions itself. Eight partial sums, added at the end,
    let the additions overlap: on a 200-long row this halves the time. The result differs from the
    one-lane sum only by float64 rounding.
    """
    n = a.shape[0]
    body = n - n % 8
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = 0.0
    for j in range(0, body, 8):
        s0 += a[j]
        s1 += a[j + 1]
        s2 += a[j + 2]
        s3 += a[j + 3]
        s4 += a[j + 4]
        s5 += a[j + 5]
        s6 += a[j + 6]
        s7 += a[j + 7]
    total = ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))
    for j in range(body, n):
        total += a[j]
    return total
