"""Exercise (chapter 05): per-image top-k routing and the dispatch plan.

probs: (B, E) router probabilities, one row per image. Return
    experts      (B, k) int64: each image's k most probable experts, most probable first
                 (ties: the lower expert index first);
    gates        (B, k): the probabilities of those experts (NOT renormalised over the k);
    source       (B*k,) int64: the image of every (image, choice) pair, sorted by expert; within one
                 expert, images in their original order (a stable sort);
    group_sizes  (E,) int64: how many pairs each expert receives.

    python tutorials/exercises/check.py topk_dispatch
"""

import numpy as np


def route(probs: np.ndarray, k: int):
    raise NotImplementedError("write route")
