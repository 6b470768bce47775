"""Exercise (chapter 06): from a confusion matrix to superclasses.

confusion: (C, C) counts, rows = true class. Build the confusion graph in three steps:
    1. rates, not counts: divide each row by its total (a row of zeros stays zero);
    2. no self-loops: set the diagonal to zero;
    3. symmetric: W = (R + Rᵀ) / 2.
The check then clusters your graph (tinymoe's spectral clustering) and asks for the planted groups.

    python tutorials/exercises/check.py superclasses
"""

import numpy as np


def confusion_graph(confusion: np.ndarray) -> np.ndarray:
    raise NotImplementedError("write confusion_graph")
