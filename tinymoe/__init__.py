"""tinymoe: a small, readable NumPy/Numba reference implementation of Mobile V-MoEs.

Daxberger et al., "Mobile V-MoEs: Scaling Down Vision Transformers via Sparse Mixture-of-Experts",
arXiv 2309.04354. Start with `tutorials/`, or:

    >>> from tinymoe import Tensor
"""

from tinymoe.tensor import Tensor, as_tensor, is_grad_enabled, no_grad

__version__ = "0.1.0"
__all__ = ["Tensor", "as_tensor", "no_grad", "is_grad_enabled", "__version__"]
