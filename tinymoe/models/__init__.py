"""Models: the Vision Transformer and Mobile V-MoE (config, layers, MoE routing, losses, FLOP counter).

    >>> from tinymoe.models import ModelConfig, VisionTransformer
    >>> model = VisionTransformer(ModelConfig(layers=6, dim=64), rng=0)   # E=10, k=1, 2 MoE blocks
    >>> out = model(images)              # images: float32 (B, 64, 64, 3), channel-last
    >>> terms = model.loss(out, labels)  # after model.set_class_to_group(superclasses)
    >>> terms.total.backward()
"""

from tinymoe.models.config import ROUTER_INPUTS, ROUTING_VARIANTS, ConfigError, ModelConfig, default_heads
from tinymoe.models.flops import ModelCost, count
from tinymoe.models.losses import LossTerms, model_loss
from tinymoe.models.moe import ROUTERS, ImageRouting, TokenRouting, random_class_groups, router_class
from tinymoe.models.vit import ModelOutput, VisionTransformer, build_model

__all__ = [
    "ConfigError",
    "ImageRouting",
    "LossTerms",
    "ModelConfig",
    "ModelCost",
    "ModelOutput",
    "ROUTER_INPUTS",
    "ROUTERS",
    "ROUTING_VARIANTS",
    "TokenRouting",
    "VisionTransformer",
    "build_model",
    "count",
    "default_heads",
    "model_loss",
    "random_class_groups",
    "router_class",
]
