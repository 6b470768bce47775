"""Exercise (chapter 01): a new op with a backward closure.

Write `sigmoid(x)` as an op: compute the forward with NumPy, and give `Tensor.from_op` a closure that
maps dL/d(output) to dL/dx. Use the saved output: sigmoid' = s * (1 - s).

    python tutorials/exercises/check.py backward_closure
"""

import numpy as np

from tinymoe import Tensor


def sigmoid(x: Tensor) -> Tensor:
    s = 1.0 / (1.0 + np.exp(-x.data))

    def backward(grad: np.ndarray):
        # Return a tuple with one gradient per parent: here dL/dx, same shape as x.
        raise NotImplementedError("write the backward closure")

    return Tensor.from_op(s, (x,), backward, "sigmoid")
