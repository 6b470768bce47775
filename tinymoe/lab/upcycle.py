"""Sparse upcycling (Komatsuzaki et al. 2023): an MoE initialised from a trained dense ViT (the study's
`--upcycle`)."""

from __future__ import annotations

import numpy as np

from tinymoe.models import ModelConfig, VisionTransformer

# The fields that fix a model's backbone: an MoE can be upcycled from a dense model only if they agree.
BACKBONE_FIELDS = ("layers", "dim", "heads", "mlp_ratio", "image_size", "patch_size", "channels", "num_classes",
                   "norm_eps")


def upcycle(dense: VisionTransformer, moe_config: ModelConfig, seed: int | None = 0) -> VisionTransformer:
    """An MoE initialised from a trained dense ViT ("sparse upcycling", Komatsuzaki et al. 2023).

    Every weight the two share is copied (patch embedding, class token, position embedding, every
    block's norms and attention, the dense blocks' MLPs, the final norm and the head); in each MoE
    block, every expert starts as a copy of that block's dense MLP. The router(s) are freshly
    initialised from `seed`, as a new model's would be.

    What this preserves: with all experts equal, an MoE block computes x + (sum of the chosen gates) ·
    MLP(LayerNorm(x)). The gates are softmax probabilities and are not renormalised (see moe.py), so
    the upcycled model equals the dense one exactly when each image's chosen gates sum to 1 (k = E);
    with k < E each MoE block's MLP branch starts scaled by the chosen gates' sum (about k / E for a
    fresh router, whose probabilities are nearly uniform), which the router's training then raises.
    """
    if not isinstance(dense, VisionTransformer) or dense.config.is_moe:
        raise ValueError("upcycle: needs a trained dense VisionTransformer (moe_layers=0) to copy from")
    if not moe_config.is_moe:
        raise ValueError("upcycle: moe_config must have moe_layers > 0 (it is the MoE to initialise)")
    clash = {f: (getattr(dense.config, f), getattr(moe_config, f)) for f in BACKBONE_FIELDS
             if getattr(dense.config, f) != getattr(moe_config, f)}
    if clash:
        listed = ", ".join(f"{f}: dense {a} vs MoE {b}" for f, (a, b) in clash.items())
        raise ValueError(f"upcycle: the dense model and the MoE config have different backbones ({listed}); "
                         "upcycle from a dense model of the same size")
    moe = VisionTransformer(moe_config, rng=seed, dtype=dense.dtype)
    source = dense.state_dict()
    target = moe.state_dict()
    for name in target:
        parts = name.split(".")
        if name in source:  # shared by both architectures
            target[name] = source[name]
        elif len(parts) == 4 and parts[0] == "blocks" and parts[2] == "experts":
            layer, field = parts[1], parts[3]  # e.g. fc1_weight -> the dense block's mlp.fc1.weight
            fc, kind = field.split("_")
            dense_param = source[f"blocks.{layer}.mlp.{fc}.{kind}"]  # (D, H) or (H,) ...
            target[name] = np.broadcast_to(dense_param, target[name].shape).copy()  # (E, ...): one copy per expert
        # everything else (the routers) keeps its fresh initialisation
    moe.load_state_dict(target)
    return moe


__all__ = ["BACKBONE_FIELDS", "upcycle"]
