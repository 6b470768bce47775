"""tinymoe's models in PyTorch: the dense ViT and the Mobile V-MoE (per-image routing, sparse) and V-MoE
token routing, under timm's parameter names, loading the weights `tinymoe.export` writes.

    from tinymoe import torch_model
    model = torch_model.from_safetensors("moe.safetensors")   # or from_tinymoe(model), load("moe.pt")
    out = model(images)            # images: float (B, H, W, c) channel-last, like tinymoe; out.logits (B, C)
    loss = model.loss(out, labels) # the same training loss as tinymoe (tinymoe.models.losses)
    torch_model.export_onnx(model, "moe.onnx")

The optional `torch` extra (pip install -e '.[torch]'); the core of tinymoe never imports this module.
It is the one PyTorch mirror of tinymoe: the parity tests hold its logits, loss and gradients equal to
tinymoe's, and bench/ measures it.

What it computes (the same as tinymoe.models, see the docstrings there):
- Conv2d patch embedding (timm's `patch_embed.proj`), class token, position embedding; pre-norm blocks
  x + attn(norm1(x)), x + mlp(norm2(x)) with the tanh GELU; final LayerNorm of the class token, head.
- Per-image routing (superclass, learned, random): after the last dense block one router reads the class
  token (or the mean patch token) and computes probs = softmax(r Wᵀ) (no bias); each image's top-k
  experts (by logit) process all its tokens in every MoE block, each output scaled by its probability
  (not renormalised). Sparse dispatch: each image *gathers its k experts' weights*
  (`fc1_weight[experts]`, (B, k, H, D)) and runs two batched matrix products, so an image reads the
  weights of k experts, never E; no data-dependent shapes, so it exports to ONNX as it is.
- Token routing (V-MoE): a router per MoE block, noisy top-k per token in training, capacity
  ceil(cf · k · N / E) slots per expert per image filled in tinymoe's priority order (all first choices,
  then second choices; tokens in position order), dropped (token, choice) pairs contribute zero. Written
  with fixed-size dispatch/combine tensors (B, N, E, capacity) as V-MoE and GShard do, so it also exports.
- Training extras: drop path (stochastic depth) and expert dropout as tinymoe's (PyTorch's random
  numbers, not tinymoe's). Teacher forcing is not implemented (raises in training).

Experts are stored stacked, `blocks.{i}.experts.fc1_weight` (E, H, D) etc., but `state_dict()` and
`load_state_dict()` use the exported per-expert names `blocks.{i}.experts.{e}.fc1.weight` (H, D), so a
state dict round-trips with safetensors files (`split_experts` converts any dict of named tensors).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tinymoe.exported import export_params, file_metadata, parse_metadata, read_safetensors
from tinymoe.models.config import ModelConfig
from tinymoe.models.moe import SuperclassRouter, expert_capacity, router_class

_FIELDS = ("fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias")
_STACKED = re.compile(r"^(.*experts\.)(fc[12])_(weight|bias)$")


def split_experts(named: dict) -> dict:
    """{..., "blocks.4.experts.fc1_weight": (E, H, D)} -> {..., "blocks.4.experts.{e}.fc1.weight": (H, D)}."""
    out = {}
    for name, value in named.items():
        m = _STACKED.match(name)
        if m is None:
            out[name] = value
            continue
        prefix, fc, kind = m.groups()
        for e in range(value.shape[0]):
            out[f"{prefix}{e}.{fc}.{kind}"] = value[e]
    return out


def drop_path(x, rate: float, training: bool):
    """Stochastic depth per image: zero the branch with probability `rate`, scale the rest by 1/(1-rate)."""
    if not training or rate == 0.0:
        return x
    keep = (torch.rand((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype, device=x.device) >= rate).to(x.dtype)
    return x * keep / (1.0 - rate)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # (3, B, H, N, Dh)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # softmax(q kᵀ / sqrt(Dh)) v
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class Experts(nn.Module):
    """E GELU MLPs stacked: fc1_weight (E, H, D), fc1_bias (E, H), fc2_weight (E, D, H), fc2_bias (E, D)
    (each expert in nn.Linear's (out, in) layout); state dicts name them per expert (see module doc)."""

    def __init__(self, experts: int, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.experts, self.dropout = experts, dropout
        self.fc1_weight = nn.Parameter(torch.zeros(experts, hidden, dim))
        self.fc1_bias = nn.Parameter(torch.zeros(experts, hidden))
        self.fc2_weight = nn.Parameter(torch.zeros(experts, dim, hidden))
        self.fc2_bias = nn.Parameter(torch.zeros(experts, dim))
        self.register_state_dict_post_hook(Experts._split)
        self.register_load_state_dict_pre_hook(Experts._stack)

    @staticmethod
    def _split(module, state_dict, prefix, local_metadata):
        for name in _FIELDS:
            value = state_dict.pop(prefix + name)
            fc, kind = name.split("_")
            for e in range(module.experts):
                state_dict[f"{prefix}{e}.{fc}.{kind}"] = value[e]

    @staticmethod
    def _stack(module, state_dict, prefix, *args):
        for name in _FIELDS:
            fc, kind = name.split("_")
            keys = [f"{prefix}{e}.{fc}.{kind}" for e in range(module.experts)]
            if all(k in state_dict for k in keys):
                state_dict[prefix + name] = torch.stack([state_dict.pop(k) for k in keys])

    def _hidden(self, h):
        return F.dropout(F.gelu(h, approximate="tanh"), self.dropout, self.training)

    def image_routed(self, h, experts, gates):
        """h (B, N, D); experts, gates (B, k): sum_j gates[b, j] · expert_{experts[b, j]}(h[b])."""
        w1, b1 = self.fc1_weight[experts], self.fc1_bias[experts]  # (B, k, H, D), (B, k, H): k experts per image
        w2, b2 = self.fc2_weight[experts], self.fc2_bias[experts]  # (B, k, D, H), (B, k, D)
        hid = self._hidden(h.unsqueeze(1) @ w1.transpose(-1, -2) + b1.unsqueeze(2))  # (B, k, N, H)
        y = hid @ w2.transpose(-1, -2) + b2.unsqueeze(2)  # (B, k, N, D)
        return (y * gates[:, :, None, None]).sum(dim=1)

    def token_routed(self, h, experts, gates, capacity: int):
        """h (B, N, D); experts, gates (B, N, k). Returns (output (B, N, D), kept (B, N, k) bool)."""
        b, n, k = experts.shape
        e_range = torch.arange(self.experts, device=h.device)
        onehot = (experts.unsqueeze(-1) == e_range).to(h.dtype)  # (B, N, k, E)
        by_priority = onehot.transpose(1, 2).reshape(b, k * n, self.experts)  # first choices, then second ...
        slot = ((torch.cumsum(by_priority, dim=1) - 1.0) * by_priority).sum(-1)  # (B, k·N): place in its buffer
        slot = slot.reshape(b, k, n).transpose(1, 2)  # (B, N, k)
        kept = slot < capacity
        slots = ((slot.unsqueeze(-1) == torch.arange(capacity, device=h.device)) & kept.unsqueeze(-1)).to(h.dtype)
        dispatch = torch.einsum("bnke,bnkc->bnec", onehot, slots)  # (B, N, E, C) 0/1
        combine = torch.einsum("bnke,bnkc->bnec", onehot * gates.unsqueeze(-1), slots)  # gate in the token's slot
        xin = torch.einsum("bnec,bnd->ebcd", dispatch, h).reshape(self.experts, b * capacity, -1)  # (E, B·C, D)
        hid = self._hidden(torch.baddbmm(self.fc1_bias.unsqueeze(1), xin, self.fc1_weight.transpose(1, 2)))
        y = torch.baddbmm(self.fc2_bias.unsqueeze(1), hid, self.fc2_weight.transpose(1, 2))  # (E, B·C, D)
        return torch.einsum("bnec,ebcd->bnd", combine, y.reshape(self.experts, b, capacity, -1)), kept


class Block(nn.Module):
    """A pre-norm block; `moe=True` replaces the MLP by `experts` (plus a router for token routing)."""

    def __init__(self, c: ModelConfig, moe: bool, drop_rate: float = 0.0):
        super().__init__()
        d = c.dim
        self.norm1 = nn.LayerNorm(d, eps=c.norm_eps)
        self.attn = Attention(d, c.heads)
        self.norm2 = nn.LayerNorm(d, eps=c.norm_eps)
        if moe:
            self.experts = Experts(c.experts, d, c.hidden_dim, c.expert_dropout)
            if router_class(c).per_token:
                self.router = nn.Linear(d, c.experts, bias=False)
        else:
            self.mlp = Mlp(d, c.hidden_dim)
        self.drop_rate = drop_rate

    def attention(self, x):
        return x + drop_path(self.attn(self.norm1(x)), self.drop_rate, self.training)

    def forward(self, x):
        x = self.attention(x)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_rate, self.training)

    def forward_image_routed(self, x, experts, gates):
        x = self.attention(x)
        return x + drop_path(self.experts.image_routed(self.norm2(x), experts, gates), self.drop_rate, self.training)

    def forward_token_routed(self, x, c: ModelConfig, noise=None):
        """Returns (x, TokenRoutingInfo). `noise` (B, N, E) replaces the drawn router noise (training)."""
        x = self.attention(x)
        h = self.norm2(x)
        logits = self.router(h)  # (B, N, E)
        sigma = c.router_noise / c.experts if self.training else 0.0  # V-MoE: noise std 1/E
        if noise is None and sigma > 0:
            noise = sigma * torch.randn_like(logits)
        noisy = logits if noise is None else logits + noise
        probs = torch.softmax(noisy, dim=-1)
        top = torch.topk(noisy, c.k, dim=-1).indices  # (B, N, k), best first
        gates = probs.gather(-1, top)
        cf = c.capacity_factor if self.training else c.eval_capacity_factor
        y, kept = self.experts.token_routed(h, top, gates, expert_capacity(h.shape[1], c.k, c.experts, cf))
        importance = _cv_squared(probs.sum(dim=1))
        load = None
        if noise is not None and sigma > 0:
            threshold = noisy.gather(-1, top[..., -1:])  # the k-th largest noisy logit
            load = _cv_squared(torch.special.ndtr((logits - threshold) / sigma).mean(dim=1))
        x = x + drop_path(y, self.drop_rate, self.training)
        return x, TokenRoutingInfo(logits, top, kept, importance, load)


def _cv_squared(v):
    """mean over images of (std_e / mean_e)^2, population std (tinymoe.models.moe.cv_squared)."""
    return (v.var(dim=-1, unbiased=False) / v.mean(dim=-1) ** 2).mean()


@dataclass
class TokenRoutingInfo:
    router_logits: torch.Tensor  # (B, N, E) before noise
    experts: torch.Tensor  # (B, N, k)
    kept: torch.Tensor  # (B, N, k) bool
    importance_loss: torch.Tensor
    load_loss: torch.Tensor | None


@dataclass
class Output:
    logits: torch.Tensor  # (B, C)
    router_logits: torch.Tensor | None = None  # per-image routing: (B, E)
    experts: torch.Tensor | None = None  # per-image routing: (B, k)
    gates: torch.Tensor | None = None  # per-image routing: (B, k)
    token_routing: list[TokenRoutingInfo] = field(default_factory=list)


class VisionTransformer(nn.Module):
    """tinymoe's VisionTransformer in PyTorch (dense, per-image MoE or token-routed MoE, by `config`)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        c = self.config = config
        d = c.dim
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(c.channels, d, c.patch_size, stride=c.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, c.num_tokens, d))
        self.blocks = nn.ModuleList(Block(c, c.is_moe_block(i), rate) for i, rate in enumerate(c.drop_path_rates()))
        if c.is_moe and not router_class(c).per_token:
            self.router = nn.Linear(d, c.experts, bias=False)
        self.norm = nn.LayerNorm(d, eps=c.norm_eps)
        self.head = nn.Linear(d, c.num_classes)
        self.class_to_group: torch.Tensor | None = None
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, seed: int | None = None):
        """timm-like initial weights (tinymoe's init="timm" scheme, PyTorch's random numbers)."""
        g = None if seed is None else torch.Generator().manual_seed(seed)
        for name, p in self.named_parameters():
            if "norm" in name:  # LayerNorms: gain 1, shift 0
                p.fill_(1.0 if name.endswith("weight") else 0.0)
            elif "patch_embed" in name:  # weight and bias uniform in ±1/sqrt(p·p·c), Conv2d's default
                bound = 1.0 / math.sqrt(self.config.patch_dim)
                p.uniform_(-bound, bound, generator=g)
            elif name.endswith("bias"):
                p.zero_()
            elif name == "cls_token":
                p.normal_(0.0, 1e-6, generator=g)
            else:  # linear weights (experts and routers too) and the position embedding
                nn.init.trunc_normal_(p, std=0.02, a=-0.04, b=0.04, generator=g)

    def set_class_to_group(self, mapping):
        self.class_to_group = None if mapping is None else torch.as_tensor(np.asarray(mapping), dtype=torch.long)

    def embed(self, images):
        """images (B, H, W, c) channel-last -> tokens (B, N, D)."""
        x = self.patch_embed.proj(images.permute(0, 3, 1, 2)).flatten(2).transpose(1, 2)  # (B, P, D)
        return torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed

    def forward(self, images, noises=None) -> Output:
        """`noises`: token routing in training only, one (B, N, E) router noise per MoE block (else drawn)."""
        c = self.config
        x = self.embed(images)
        out = Output(logits=None)
        for i, block in enumerate(self.blocks):
            if not c.is_moe_block(i):
                x = block(x)
            elif router_class(c).per_token:
                x, info = block.forward_token_routed(x, c, None if noises is None else noises[len(out.token_routing)])
                out.token_routing.append(info)
            else:
                if out.experts is None:  # after the last dense block: one decision per image, for all MoE blocks
                    r = x[:, 0] if c.router_input == "class_token" else x[:, 1:].mean(dim=1)
                    out.router_logits = self.router(r)  # (B, E)
                    probs = torch.softmax(out.router_logits, dim=-1)
                    out.experts = torch.topk(out.router_logits, c.k, dim=-1).indices  # (B, k), best first
                    out.gates = probs.gather(1, out.experts)  # not renormalised (see tinymoe/models/moe.py)
                x = block.forward_image_routed(x, out.experts, out.gates)
        out.logits = self.head(self.norm(x[:, 0]))
        return out

    def loss(self, out: Output, labels, label_smoothing: float = 0.0):
        """tinymoe's training loss (tinymoe.models.losses.model_loss): CE (+ router CE) (+ balance)."""
        c = self.config
        total = F.cross_entropy(out.logits, labels, label_smoothing=label_smoothing)
        if out.router_logits is not None and issubclass(router_class(c), SuperclassRouter):  # superclass, random
            if self.class_to_group is None:
                raise ValueError("the router's superclass loss needs model.set_class_to_group(groups)")
            groups = self.class_to_group.to(out.logits.device)
            if labels.is_floating_point():  # soft targets: the mixture carried over to superclasses
                target = labels @ F.one_hot(groups, c.experts).to(labels.dtype)
            else:
                target = groups[labels]
            total = total + c.router_weight * F.cross_entropy(out.router_logits, target)
        for info in out.token_routing:
            balance = info.importance_loss if info.load_loss is None else 0.5 * (info.importance_loss + info.load_loss)
            total = total + c.balance_weight * balance
        return total


# --------------------------------------------------------------------------------------------------
# Loading and saving
# --------------------------------------------------------------------------------------------------
def from_exported(config: ModelConfig, tensors: dict, class_to_group=None) -> VisionTransformer:
    """A model from exported (timm-named) tensors; the model takes their dtype (float32 or float64)."""
    tensors = {n: torch.as_tensor(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v
               for n, v in tensors.items()}
    model = VisionTransformer(config).to(next(iter(tensors.values())).dtype)
    model.load_state_dict(tensors, strict=True)
    model.set_class_to_group(class_to_group)
    return model


def from_tinymoe(model) -> VisionTransformer:
    """The PyTorch twin of a tinymoe model (same weights, same dtype)."""
    return from_exported(model.config, export_params(model.state_dict(), model.config),
                         getattr(model, "class_to_group", None))


def from_safetensors(path) -> VisionTransformer:
    config, tensors, groups = read_safetensors(path)
    return from_exported(config, tensors, groups)


def save(model: VisionTransformer, out) -> Path:
    """torch.save of {"metadata": the export metadata (config, class_to_group), "state_dict": exported names}."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    groups = None if model.class_to_group is None else model.class_to_group.numpy()
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    torch.save({"metadata": file_metadata(model.config, groups), "state_dict": state}, out)
    return out


def save_safetensors(model: VisionTransformer, out) -> Path:
    """The model's weights as an exported safetensors file (what `tinymoe.export.load_safetensors` and
    `from_safetensors` read), e.g. after training it further in PyTorch."""
    from safetensors.numpy import save_file

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    groups = None if model.class_to_group is None else model.class_to_group.numpy()
    tensors = {k: np.ascontiguousarray(v.detach().cpu().numpy()) for k, v in model.state_dict().items()}
    save_file(tensors, str(out), metadata=file_metadata(model.config, groups))
    return out


def load(path) -> VisionTransformer:
    """The model of a file written by `save` (python -m tinymoe.export ... --to torch)."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    config, groups = parse_metadata(blob.get("metadata"), str(path))
    return from_exported(config, blob["state_dict"], groups)


class LogitsOnly(nn.Module):
    """images -> logits, the graph an ONNX file holds."""

    def __init__(self, model: VisionTransformer):
        super().__init__()
        self.model = model

    def forward(self, images):
        return self.model(images).logits


def export_onnx(model: VisionTransformer, out, *, opset: int | None = None, batch: int = 2) -> Path:
    """Export the eval-mode model to ONNX: input "images" float32 (batch, H, W, c), output "logits";
    the batch axis is dynamic. The config and class map go into the file's metadata_props."""
    import onnx

    c = model.config
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = model.float().eval()
    example = torch.zeros(batch, c.image_size, c.image_size, c.channels)
    kwargs = {} if opset is None else {"opset_version": opset}
    torch.onnx.export(LogitsOnly(model).eval(), (example,), str(out), input_names=["images"], output_names=["logits"],
                      dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},), dynamo=True,
                      external_data=False, verbose=False, **kwargs)
    proto = onnx.load(str(out))
    groups = None if model.class_to_group is None else model.class_to_group.numpy()
    for key, value in file_metadata(c, groups).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(out))
    return out


def timm_vit(config: ModelConfig):
    """timm's VisionTransformer with tinymoe's dense architecture; the exported state dict loads into it
    (strict). Feed it NCHW images: images.permute(0, 3, 1, 2)."""
    from functools import partial

    from timm.layers import get_act_layer
    from timm.models.vision_transformer import VisionTransformer as TimmViT

    if config.is_moe:
        raise ValueError("timm's VisionTransformer is dense; an MoE checkpoint loads into tinymoe.torch_model")
    c = config
    return TimmViT(img_size=c.image_size, patch_size=c.patch_size, in_chans=c.channels, num_classes=c.num_classes,
                   embed_dim=c.dim, depth=c.layers, num_heads=c.heads, mlp_ratio=c.mlp_ratio, qkv_bias=True,
                   class_token=True, global_pool="token", act_layer=get_act_layer("gelu_tanh"),
                   norm_layer=partial(nn.LayerNorm, eps=c.norm_eps))


__all__ = [
    "VisionTransformer",
    "Output",
    "TokenRoutingInfo",
    "Experts",
    "split_experts",
    "from_exported",
    "from_tinymoe",
    "from_safetensors",
    "save",
    "save_safetensors",
    "load",
    "export_onnx",
    "timm_vit",
]
