"""Solution: cross-entropy of the router's logits against each image's superclass."""

import numpy as np


def superclass_loss(router_logits: np.ndarray, labels: np.ndarray, class_to_group: np.ndarray) -> float:
    z = router_logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    targets = np.asarray(class_to_group)[labels]
    return float(-log_probs[np.arange(len(labels)), targets].mean())
