"""Superclasses: which classes should share an expert.

Mobile V-MoE (Daxberger et al., 2023) routes each *whole image* to one expert, and trains the router to
predict the image's **superclass**: a group of classes that a trained dense model confuses with each
other. Classes that look alike then share an expert, and that expert specialises in telling them apart.
The paper gets the groups from a dense model's confusion matrix on a held-out part of the training set,
turned into a confusion graph and cut into E clusters (one per expert). This package does the same:

    labels, predictions of a dense model on the held-out split
      -> confusion_matrix  (C, C) counts, row = true class, column = predicted class
      -> confusion_graph   (C, C) symmetric edge weights in [0, 1], no self-loops
      -> cluster           (C,)   superclass id of each class: exactly E non-empty groups
      -> save_superclasses JSON with wnid, index, name and superclass of every class

    >>> confusion = confusion_matrix(labels, predictions, num_classes=200)
    >>> superclass = cluster(confusion, n_groups=10, seed=0)      # superclass[c] in 0..9
    >>> print(superclass_table(superclass, class_names))

The held-out split is carved from *train* and is never the validation set: the superclasses become
training targets for the router, so computing them on validation images would leak the evaluation set
into training.

    algorithm.py   the paper's algorithm alone (NumPy only, no I/O): confusion -> graph -> spectral
                   embedding -> k-means. Read this one.
    files.py       the superclasses JSON, the predictions .npz, balance and the Table-1-style table.
    __main__.py    the command line. Running a dense model over the held-out split is a pipeline step
                   (`tinymoe.pipeline.predict_held_out`, `write_superclasses`), not part of this package.

Command line (`python -m tinymoe.superclasses --help`):

    python -m tinymoe.superclasses --checkpoint DENSE.npz --data DIR --experts 10 --out superclasses.json
    python -m tinymoe.superclasses --predictions heldout.npz --experts 10 --out superclasses.json
"""

from tinymoe.superclasses.algorithm import (
    canonical_labels,
    cluster,
    confusion_graph,
    confusion_matrix,
    isolated_classes,
    kmeans,
    spectral_embedding,
    superclasses_from_predictions,
)
from tinymoe.superclasses.files import (
    GroupBalance,
    Superclasses,
    SuperclassFileError,
    group_balance,
    load_predictions,
    load_superclasses,
    save_superclasses,
    superclass_table,
)

from tinymoe.superclasses import algorithm, files  # noqa: E402  (their own __all__ lists)

__all__ = algorithm.__all__ + files.__all__
