"""Solution: the importance loss, cv² of each image's per-expert probability mass."""

import numpy as np


def importance_loss(probs: np.ndarray) -> float:
    importance = probs.sum(axis=1)                   # (B, E)
    mean = importance.mean(axis=-1)
    variance = ((importance - mean[:, None]) ** 2).mean(axis=-1)
    return float((variance / mean**2).mean())
