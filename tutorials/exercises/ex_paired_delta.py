"""Exercise (chapter 07): how much of a measured Δ is the choice of val images?

dense_right, moe_right: (N,) bool, whether each model got val image i right (both scored on the SAME images).
Return (delta, half95), both in percentage points:
    delta  = top-1(MoE) - top-1(dense)
    half95 = 1.96 * the standard error of delta, *paired by image*: per image d_i = moe_right_i - dense_right_i
             (-1, 0 or +1), standard error = sample std of d (ddof=1) / sqrt(N).
Only the images exactly one model gets right make delta uncertain; two accuracies treated as independent
would overstate the error.

Try it on a real run (no checkpoint needed):
    p = np.load("bench/results/data-scale/predictions/base-seed0.npz", allow_pickle=False)
    paired_delta(p["dense"] == p["labels"], p["moe"] == p["labels"])

    python tutorials/exercises/check.py paired_delta
"""

import numpy as np


def paired_delta(dense_right: np.ndarray, moe_right: np.ndarray) -> tuple[float, float]:
    raise NotImplementedError("write paired_delta")
