"""The lab: what the reproduction study needs beyond the paper's model. It imports the core
(tinymoe.models and friends); the core never imports it.

    routing.py   override the router's decision from outside: teacher forcing (training) and oracle
                 routing (evaluation), both built on `forced_routing`
    upcycle.py   an MoE whose experts start as copies of a trained dense model's MLP
    stats.py     the paired difference of two models scored on the same images (Δ and its error)
"""

from tinymoe.lab.routing import forced_routing, forward_with_experts, teacher_forced_forward
from tinymoe.lab.stats import PairedDifference, paired_difference
from tinymoe.lab.upcycle import BACKBONE_FIELDS, upcycle

__all__ = ["BACKBONE_FIELDS", "PairedDifference", "forced_routing", "forward_with_experts", "paired_difference",
           "teacher_forced_forward", "upcycle"]
