"""Exercise (chapter 05): V-MoE's importance (load-balancing) loss.

probs: (B, N, E), the router's full softmax for each of the N tokens of each of B images.
    importance[b, e] = sum over the image's tokens of probs[b, :, e]
    loss             = mean over images of cv²(importance[b]),  cv² = (std / mean)² over the E experts
                       (population std). 0 when all experts are equal; E - 1 when one gets everything.

    python tutorials/exercises/check.py load_balance
"""

import numpy as np


def importance_loss(probs: np.ndarray) -> float:
    raise NotImplementedError("write importance_loss")
