"""Helpers for the model tests: tiny configs, and gradient checks of a whole module w.r.t. its parameters."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from tinymoe.gradcheck import gradcheck
from tinymoe.models import ModelConfig


def tiny_config(**changes) -> ModelConfig:
    """A model small enough for finite differences: 4x4 images, 2x2 patches (5 tokens), width 8, 2 heads."""
    values = dict(layers=2, dim=8, heads=2, mlp_ratio=2, image_size=4, patch_size=2, channels=3, num_classes=5,
                  moe_layers=1, experts=3, k=1)
    values.update(changes)
    return ModelConfig(**values)


@st.composite
def tiny_configs(draw, max_dim=8, **fixed):
    """Hypothesis: tiny configs of varied shape (width, heads, depth, patching, experts, k)."""
    dim, heads = draw(st.sampled_from([(d, h) for d, h in [(4, 1), (4, 2), (6, 3), (8, 2)] if d <= max_dim]))
    layers = draw(st.integers(1, 2))
    experts = draw(st.integers(2, 3))
    values = dict(
        layers=layers,
        dim=dim,
        heads=heads,
        mlp_ratio=draw(st.sampled_from([1, 2])),
        image_size=4,
        patch_size=draw(st.sampled_from([2, 4])),
        channels=draw(st.sampled_from([1, 3])),
        num_classes=draw(st.integers(2, 4)),
        moe_layers=draw(st.integers(1, layers)),
        experts=experts,
        k=draw(st.integers(1, experts)),
    )
    values.update(fixed)
    return ModelConfig(**values)


def parameter_owners(module) -> dict:
    """Dotted parameter name -> (owning module, attribute name)."""
    owners = {}
    for prefix, mod in module.named_modules():
        for attr in mod._parameters:
            owners[f"{prefix}.{attr}" if prefix else attr] = (mod, attr)
    return owners


def call_with_parameters(module, names, tensors, fn):
    """Run fn() with the named parameters of `module` temporarily replaced by `tensors`.

    Layers read their parameters as attributes, so swapping the attribute (bypassing Module's
    registration) makes the forward use the given tensors, whose gradients gradcheck reads."""
    owners = parameter_owners(module)
    saved = []
    try:
        for name, tensor in zip(names, tensors):
            mod, attr = owners[name]
            saved.append((mod, attr, mod.__dict__[attr]))
            object.__setattr__(mod, attr, tensor)
        return fn()
    finally:
        for mod, attr, original in reversed(saved):
            object.__setattr__(mod, attr, original)


def module_gradcheck(module, fn, extra_inputs=(), names=None, **kwargs):
    """gradcheck of fn(*extra_tensors) -> Tensor with respect to `extra_inputs` and the parameters
    `names` of `module` (default: all). The module should be float64 (module.to_dtype(np.float64))."""
    params = dict(module.named_parameters())
    names = list(params) if names is None else list(names)
    extra_inputs = [np.asarray(a, dtype=np.float64) for a in extra_inputs]
    n_extra = len(extra_inputs)

    def wrapped(*tensors):
        return call_with_parameters(module, names, tensors[n_extra:], lambda: fn(*tensors[:n_extra]))

    return gradcheck(wrapped, extra_inputs + [params[n].data for n in names], **kwargs)


def routing_margin(logits: np.ndarray, k: int) -> float:
    """Smallest gap between the k-th and (k+1)-th largest logit of any row (inf when k = E): the
    finite-difference step must not flip an expert choice, so tests require a margin."""
    if k >= logits.shape[-1]:
        return np.inf
    ordered = -np.sort(-logits, axis=-1)
    return float(np.min(ordered[..., k - 1] - ordered[..., k]))


def composed_expert_mlps(module, x, dispatch, gates, hidden_mask=None):
    """ExpertMlps' computation spelled out in primitive ops, the reference the fused op is held to: gather,
    two grouped linear maps with GELU (times the dropout mask, if any), gate, scatter back."""
    from tinymoe import ops

    xs = ops.take(x, dispatch.source, axis=0)  # (M, ..., D): each expert's rows, expert by expert
    h = ops.gelu(ops.expert_linear(xs, module.fc1_weight, module.fc1_bias, dispatch.group_sizes))  # (M, ..., H)
    if hidden_mask is not None:
        h = h * hidden_mask
    y = ops.expert_linear(h, module.fc2_weight, module.fc2_bias, dispatch.group_sizes)  # (M, ..., D)
    g = ops.take(gates, dispatch.choice, axis=0)  # (M,): the gate of each dispatched row
    y = y * ops.reshape(g, g.shape + (1,) * (y.ndim - 1))
    return ops.scatter_add(y, dispatch.source, size=dispatch.num_rows, axis=0)  # (R, ..., D)
