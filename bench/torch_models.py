"""The PyTorch side of the benchmarks (bench/throughput.py, bench/calibration_torch.py): tinymoe's shipped
PyTorch mirror, `tinymoe.torch_model`, behind the small interface those scripts use.

There is one PyTorch implementation of tinymoe's models, `tinymoe/torch_model.py` (dense ViT, Mobile V-MoE
with sparse per-image dispatch, V-MoE token routing; nn.Linear / nn.LayerNorm / Conv2d patch embedding /
F.scaled_dot_product_attention, tanh GELU, LayerNorm eps 1e-6), held equal to tinymoe by the parity tests
(tests/models/test_parity_torch.py, tests/models/test_parity_export.py). This file only adapts it:
`ViT(...)` takes the keyword arguments the benchmarks pass and its forward returns (logits, router_logits),
`loss_fn` is the training loss (CE + router_weight · CE on the superclasses), `init_like_tinymoe` draws
timm-scale weights.

PyTorch is only a benchmark (and parity-test) dependency, never a runtime one.
"""

from __future__ import annotations

import torch.nn.functional as F

from tinymoe import torch_model
from tinymoe.models import ModelConfig


class ViT(torch_model.VisionTransformer):
    """Dense ViT, or Mobile V-MoE (superclass routing) when `experts` > 0; forward -> (logits, router_logits)."""

    def __init__(self, layers=6, dim=64, heads=None, mlp_ratio=4, image_size=64, patch_size=8, channels=3,
                 num_classes=200, experts=0, k=1, moe_layers=2):
        super().__init__(ModelConfig(layers=layers, dim=dim, heads=heads, mlp_ratio=mlp_ratio, image_size=image_size,
                                     patch_size=patch_size, channels=channels, num_classes=num_classes,
                                     moe_layers=moe_layers if experts else 0, experts=max(experts, 1), k=k))

    def forward(self, images):
        out = super().forward(images)
        return out.logits, out.router_logits


def loss_fn(model_out, labels, superclass_labels, router_weight=0.3):
    logits, router_logits = model_out
    loss = F.cross_entropy(logits, labels)
    if router_logits is not None:
        loss = loss + router_weight * F.cross_entropy(router_logits, superclass_labels)
    return loss


def init_like_tinymoe(model: torch_model.VisionTransformer, seed: int = 0) -> None:
    """tinymoe's init="timm" scheme (truncated normal std 0.02, zero biases, ...), PyTorch's random numbers:
    both sides train on comparable numbers (speed does not depend on it, but NaNs would)."""
    model.reset_parameters(seed)
