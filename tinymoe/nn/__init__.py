"""Building blocks of models: Module (parameter bookkeeping, state dicts), Parameter, ModuleList,
and the layers Linear and LayerNorm. Models (`tinymoe.models`) are Modules made of these."""

from tinymoe.nn.init import truncated_normal
from tinymoe.nn.layers import LayerNorm, Linear
from tinymoe.nn.module import LoadResult, Module, ModuleList, Parameter

__all__ = ["LayerNorm", "Linear", "LoadResult", "Module", "ModuleList", "Parameter", "truncated_normal"]
