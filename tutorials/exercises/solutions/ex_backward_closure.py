"""Solution: sigmoid with a backward closure that uses the saved output."""

import numpy as np

from tinymoe import Tensor


def sigmoid(x: Tensor) -> Tensor:
    s = 1.0 / (1.0 + np.exp(-x.data))

    def backward(grad: np.ndarray):
        return (grad * s * (1.0 - s),)

    return Tensor.from_op(s, (x,), backward, "sigmoid")
