"""The autograd engine: a Tensor that records how it was made, and `backward` that replays it in reverse.

Everything differentiable in tinymoe is built from one pattern. An op (see `tinymoe/ops/`) computes its
output array with NumPy, then calls `Tensor.from_op(out, parents, backward, name)`, where `backward` is a
closure that maps the gradient of the loss with respect to the output, dL/d(out), to one gradient per
parent (the vector-Jacobian product). The engine then does three things, each in exactly one place:

1. `backward()` visits the nodes in reverse topological order, so a node's gradient is complete (every
   consumer has added its share) before the node passes it on to its own parents.
2. Gradients that an op returns in the *broadcast* shape are summed back to the parent's shape by
   `unbroadcast` here, so no op has to think about broadcasting in its backward.
3. Gradients from several uses of one tensor are added together (the multivariate chain rule).

A tiny example:

    >>> x = Tensor(np.array([1.0, 2.0, 3.0]), requires_grad=True)
    >>> y = (x * x).sum()          # y = sum(x_i^2)
    >>> y.backward()
    >>> x.grad                      # dy/dx_i = 2 x_i
    array([2., 4., 6.])
"""

from __future__ import annotations

import contextlib
import threading
from typing import Callable, Iterator, Sequence

import numpy as np

# A backward closure: gradient of the output -> one gradient (or None) per parent, in parent order.
BackwardFn = Callable[[np.ndarray], Sequence["np.ndarray | None"]]

_FLOAT_DTYPES = (np.float16, np.float32, np.float64)

# Whether ops record the graph. `no_grad()` turns it off, e.g. for evaluation, where recording would
# only keep activations alive for a backward pass that never comes. The switch is per thread (as in
# PyTorch): tinymoe.parallel runs one batch's shards on several threads, and one thread leaving
# `no_grad()` must not turn recording back on (or off) for another that is still inside it.
_mode = threading.local()


def is_grad_enabled() -> bool:
    return getattr(_mode, "grad_enabled", True)  # a new thread starts with recording on


@contextlib.contextmanager
def no_grad() -> Iterator[None]:
    """Context manager: ops run inside it, on this thread, build no graph (outputs have requires_grad=False)."""
    previous = is_grad_enabled()
    _mode.grad_enabled = False
    try:
        yield
    finally:
        _mode.grad_enabled = previous


def unbroadcast(grad: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Sum `grad` down to `shape`, undoing NumPy broadcasting.

    If a (3,) vector was broadcast against a (4, 3) matrix, each of its entries was used 4 times, so its
    gradient is the sum of the 4 gradients of those uses. Broadcasting does two things, undone in turn:
    it prepends axes (sum them away) and it stretches size-1 axes (sum them, keeping the axis).
    """
    if grad.shape == shape:
        return grad
    extra = grad.ndim - len(shape)
    if extra < 0:
        raise ValueError(f"gradient of shape {grad.shape} cannot be reduced to shape {shape}")
    if extra:
        grad = grad.sum(axis=tuple(range(extra)))
    stretched = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if stretched:
        grad = grad.sum(axis=stretched, keepdims=True)
    if grad.shape != shape:
        raise ValueError(f"gradient of shape {grad.shape} cannot be reduced to shape {shape}")
    return grad


def _as_array(data, dtype=None) -> np.ndarray:
    if isinstance(data, Tensor):
        raise TypeError("Tensor(...) got a Tensor; use t.detach() or t.data to share its array")
    arr = np.asarray(data, dtype=dtype)
    if arr.dtype.kind not in "fiub":
        raise TypeError(
            f"Tensor data must be a real number array, got dtype {arr.dtype}; "
            "convert it with np.asarray(x, dtype=np.float32) first"
        )
    return arr


class Tensor:
    """An ndarray plus what autograd needs: whether it wants a gradient, and how it was made.

    Attributes:
        data: the NumPy array holding the values (any float dtype; float32 for training,
              float64 for gradient checking; integer arrays are allowed for non-differentiable data).
        grad: after `backward()`, dL/d(self) as an array of the same shape and dtype, for tensors that
              are leaves (made by the user) with requires_grad=True, or that called `retain_grad()`.
        requires_grad: whether gradients flow to (and through) this tensor.
    """

    # Make NumPy defer to Tensor for `ndarray + Tensor` instead of broadcasting element by element.
    __array_priority__ = 1000

    def __init__(self, data, requires_grad: bool = False, dtype=None):
        self.data: np.ndarray = _as_array(data, dtype)
        if requires_grad and self.data.dtype.type not in _FLOAT_DTYPES:
            raise TypeError(
                f"only floating-point tensors can require gradients, got dtype {self.data.dtype}; "
                "pass dtype=np.float32 (training) or np.float64 (gradient checks)"
            )
        self.requires_grad: bool = bool(requires_grad)
        self.grad: np.ndarray | None = None
        # Graph bookkeeping; empty for leaves. Set by `from_op`.
        self._parents: tuple[Tensor, ...] = ()
        self._backward: BackwardFn | None = None
        self._op: str = ""
        self._retain_grad = False
        self._graph_freed = False

    # ----------------------------------------------------------------------------------------------
    # Building the graph
    # ----------------------------------------------------------------------------------------------
    @classmethod
    def from_op(cls, data: np.ndarray, parents: Sequence[Tensor], backward: BackwardFn, op: str) -> Tensor:
        """Wrap an op's output; record `parents` and `backward` if any parent needs a gradient.

        Ops call this and nothing else to join the graph. Under `no_grad()`, or when no parent requires
        a gradient, nothing is recorded and the closure (with the arrays it saved) is dropped at once.
        """
        out = cls(data)
        if is_grad_enabled() and any(p.requires_grad for p in parents):
            out.requires_grad = True
            out._parents = tuple(parents)
            out._backward = backward
            out._op = op
        return out

    @property
    def is_leaf(self) -> bool:
        return self._backward is None and not self._graph_freed

    def retain_grad(self) -> Tensor:
        """Keep `.grad` on this intermediate tensor too (leaves always keep theirs). Handy for teaching."""
        self._retain_grad = True
        return self

    # ----------------------------------------------------------------------------------------------
    # Running it backwards
    # ----------------------------------------------------------------------------------------------
    def _topological_order(self) -> list[Tensor]:
        """All tensors that `self` depends on (and that require grad), each listed after its parents.

        Why a topological order: a tensor used by several ops receives one gradient contribution from
        each. Only when all of them have arrived may it apply its own backward; walking the list from
        the end (consumers first) guarantees that. The walk is an explicit-stack depth-first search,
        not recursion, so a chain of 100,000 ops does not hit Python's recursion limit.
        """
        order: list[Tensor] = []
        expanded: set[int] = set()
        stack: list[tuple[Tensor, bool]] = [(self, False)]
        while stack:
            node, parents_done = stack.pop()
            if parents_done:  # every parent is already in `order`: now the node may follow them
                order.append(node)
                continue
            if id(node) in expanded:
                continue
            expanded.add(id(node))
            stack.append((node, True))
            for parent in node._parents:
                if parent.requires_grad and id(parent) not in expanded:
                    stack.append((parent, False))
        return order

    def backward(self, grad=None, retain_graph: bool = False) -> None:
        """Compute dL/d(leaf) for every leaf this tensor depends on, adding into each leaf's `.grad`.

        Args:
            grad: dL/d(self). May be omitted only when `self` holds a single number (a loss), in which
                  case it is 1. Otherwise pass an array (or Tensor) of `self`'s shape.
            retain_graph: keep the recorded graph (and the arrays it saved) so backward can run on it
                  again. By default the graph is freed as it is walked, so activations are released
                  as soon as their gradient has been used.
        """
        if not self.requires_grad:
            raise RuntimeError(
                "backward() called on a tensor that does not require grad: none of the tensors it was "
                "computed from had requires_grad=True (or it was computed under no_grad())"
            )
        if self._graph_freed:
            raise RuntimeError(
                "backward() through a graph that was already freed by an earlier backward(); "
                "call the first backward(retain_graph=True) to run backward twice"
            )
        if grad is None:
            if self.data.size != 1:
                raise RuntimeError(
                    f"backward() without a gradient needs a single-number output, but this tensor has shape "
                    f"{self.data.shape}; pass grad=an array of that shape (dL/d(output)), or reduce it first, "
                    "e.g. y.sum().backward()"
                )
            grad = np.ones_like(self.data)
        grad = np.asarray(grad.data if isinstance(grad, Tensor) else grad, dtype=self.data.dtype)
        if grad.shape != self.data.shape:
            raise ValueError(f"backward() got grad of shape {grad.shape} for a tensor of shape {self.data.shape}")

        grads: dict[int, np.ndarray] = {id(self): grad}
        for node in reversed(self._topological_order()):
            if node._graph_freed:
                # An intermediate whose record was dropped by an earlier backward(): treating it as a
                # leaf would silently lose the gradient of everything it was computed from.
                raise RuntimeError(
                    f"backward() reached a tensor made by op '{node._op}' whose graph was freed by an earlier "
                    "backward(); call that first backward(retain_graph=True), or recompute the tensor"
                )
            g = grads.pop(id(node), None)
            if g is None:  # the node feeds into nothing that leads to `self`
                continue
            if node._backward is None or node._retain_grad:
                # A leaf (or a tensor asked to keep its grad): accumulate, never overwrite, so two
                # backward passes, or two losses, add up as the chain rule says they should.
                node.grad = g.copy() if node.grad is None else node.grad + g
            if node._backward is None:
                continue
            parent_grads = node._backward(g)
            if len(parent_grads) != len(node._parents):
                raise RuntimeError(
                    f"backward of op '{node._op}' returned {len(parent_grads)} gradients for "
                    f"{len(node._parents)} inputs"
                )
            for parent, pg in zip(node._parents, parent_grads):
                if pg is None or not parent.requires_grad:
                    continue
                pg = unbroadcast(np.asarray(pg), parent.data.shape).astype(parent.data.dtype, copy=False)
                key = id(parent)
                # `+` makes a new array: the op may have returned a view of its own saved arrays.
                grads[key] = pg if key not in grads else grads[key] + pg
            if not retain_graph:
                node._backward = None  # drops the closure and every array it saved
                node._parents = ()
                node._graph_freed = True

    def zero_grad(self) -> None:
        self.grad = None

    # ----------------------------------------------------------------------------------------------
    # Conveniences
    # ----------------------------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def size(self) -> int:
        return self.data.size

    def __len__(self) -> int:
        return len(self.data)

    def numpy(self) -> np.ndarray:
        return self.data

    def item(self) -> float:
        return self.data.item()

    def detach(self) -> Tensor:
        """The same values, cut from the graph (shares memory with `self.data`)."""
        return Tensor(self.data)

    def astype(self, dtype) -> Tensor:
        """A copy of the values in another dtype, cut from the graph."""
        return Tensor(self.data.astype(dtype), requires_grad=self.requires_grad)

    def __repr__(self) -> str:
        extra = f", op={self._op}" if self._op else (", requires_grad=True" if self.requires_grad else "")
        return f"Tensor({np.array2string(self.data, precision=4, threshold=20)}, dtype={self.data.dtype}{extra})"

    # Arithmetic and friends are defined by the ops; the methods just forward to them.
    def __add__(self, other):
        return ops.add(self, other)

    def __radd__(self, other):
        return ops.add(other, self)

    def __sub__(self, other):
        return ops.sub(self, other)

    def __rsub__(self, other):
        return ops.sub(other, self)

    def __mul__(self, other):
        return ops.mul(self, other)

    def __rmul__(self, other):
        return ops.mul(other, self)

    def __truediv__(self, other):
        return ops.div(self, other)

    def __rtruediv__(self, other):
        return ops.div(other, self)

    def __neg__(self):
        return ops.neg(self)

    def __pow__(self, exponent):
        return ops.pow(self, exponent)

    def __matmul__(self, other):
        return ops.matmul(self, other)

    def __rmatmul__(self, other):
        return ops.matmul(other, self)

    def __getitem__(self, index):
        return ops.getitem(self, index)

    def exp(self):
        return ops.exp(self)

    def log(self):
        return ops.log(self)

    def tanh(self):
        return ops.tanh(self)

    def relu(self):
        return ops.relu(self)

    def sum(self, axis=None, keepdims=False):
        return ops.sum(self, axis=axis, keepdims=keepdims)

    def mean(self, axis=None, keepdims=False):
        return ops.mean(self, axis=axis, keepdims=keepdims)

    def max(self, axis=None, keepdims=False):
        return ops.max(self, axis=axis, keepdims=keepdims)

    def reshape(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return ops.reshape(self, shape)

    def transpose(self, *axes):
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        return ops.transpose(self, axes or None)

    permute = transpose

    @property
    def T(self):
        return ops.transpose(self, None)


def as_tensor(x, dtype=None) -> Tensor:
    """`x` if it is already a Tensor, else a constant Tensor (requires_grad=False) holding it."""
    if isinstance(x, Tensor):
        return x
    return Tensor(x, dtype=dtype)


# The ops module imports Tensor from here, so it can only be imported once Tensor exists. The methods
# above look `ops` up when they run, by which time this line has executed.
from tinymoe import ops  # noqa: E402
