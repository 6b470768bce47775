"""tinymoe: a small, readable NumPy/Numba reference implementation of Mobile V-MoEs.

Daxberger et al., "Mobile V-MoEs: Scaling Down Vision Transformers via Sparse Mixture-of-Experts",
arXiv 2309.04354. Start with `tutorials/`, or:

    >>> from tinymoe import Tensor
    >>> x = Tensor(np.ones(3), requires_grad=True)

Importing the package itself loads nothing heavy: `Tensor` and friends are imported on first use
(PEP 562). That lets the command-line tools (`python -m tinymoe.train --threads 2`) set the thread
counts of NumPy's BLAS and Numba, which are read once when NumPy loads, before anything imports NumPy.
"""

__version__ = "0.1.0"
__all__ = ["Tensor", "as_tensor", "no_grad", "is_grad_enabled", "__version__"]


def __getattr__(name):
    if name in ("Tensor", "as_tensor", "no_grad", "is_grad_enabled"):
        from tinymoe import tensor

        return getattr(tensor, name)
    raise AttributeError(f"module 'tinymoe' has no attribute {name!r}")
