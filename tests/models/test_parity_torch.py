"""Parity with PyTorch: an independent PyTorch implementation of the same models, written here from the
paper's description (timm-style layout: Conv2d patch embedding, (out, in) Linear weights, one nn.Linear
pair per expert, experts evaluated densely and combined with a masked gate matrix, capacity by an
explicit loop), loaded with a tinymoe model's weights. Logits, the loss and the gradient of every
parameter must agree, for dense, superclass-routed MoE (k = 1, 2), and token routing.

Needs the `parity` extra (pip install -e ".[parity]", a CPU build of torch); skipped without it.
"""

import math
import re

import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="PyTorch is not installed: the parity tests need the parity extra, pip install -e '.[parity]'"
)
nn = torch.nn
F = torch.nn.functional

from tinymoe.models import ModelConfig, VisionTransformer  # noqa: E402


# ---------------------------------------------------------------------------------------------------
# the PyTorch reference
# ---------------------------------------------------------------------------------------------------
class TorchMlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class TorchBlock(nn.Module):
    def __init__(self, c: ModelConfig, moe: bool):
        super().__init__()
        d = c.dim
        self.heads = c.heads
        self.norm1, self.norm2 = nn.LayerNorm(d, eps=1e-6), nn.LayerNorm(d, eps=1e-6)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        if moe:
            self.experts = nn.ModuleList(TorchMlp(d, c.hidden_dim) for _ in range(c.experts))
            if c.routing == "token":
                self.router = nn.Linear(d, c.experts, bias=False)
        else:
            self.mlp = TorchMlp(d, c.hidden_dim)

    def attention(self, x):
        b, n, d = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d // self.heads), dim=-1)
        return x + self.proj((weights @ v).transpose(1, 2).reshape(b, n, d))

    def mixture(self, h, combine):
        """sum_e combine[..., e] * expert_e(h): every expert on every token, zero weight where not chosen."""
        return sum(combine[..., e, None] * expert(h) for e, expert in enumerate(self.experts))

    def forward_dense(self, x):
        x = self.attention(x)
        return x + self.mlp(self.norm2(x))

    def forward_image_routed(self, x, combine):  # combine: (B, E)
        x = self.attention(x)
        return x + self.mixture(self.norm2(x), combine[:, None, :])

    def forward_token_routed(self, x, c: ModelConfig, noise):
        x = self.attention(x)
        h = self.norm2(x)
        b, n, _ = h.shape
        logits = self.router(h)  # (B, N, E)
        noisy = logits if noise is None else logits + noise
        probs = torch.softmax(noisy, dim=-1)
        top = torch.topk(noisy, c.k, dim=-1).indices  # (B, N, k)
        capacity_factor = c.capacity_factor if self.training else c.eval_capacity_factor
        capacity = math.ceil(capacity_factor * c.k * n / c.experts)
        mask = torch.zeros_like(probs)
        for image in range(b):  # fill each expert's slots: first choices of all tokens, then second choices
            used = [0] * c.experts
            for j in range(c.k):
                for token in range(n):
                    e = int(top[image, token, j])
                    if used[e] < capacity:
                        used[e] += 1
                        mask[image, token, e] = 1.0
        x = x + self.mixture(h, probs * mask)

        def cv2(v):
            return (v.var(dim=-1, unbiased=False) / v.mean(dim=-1) ** 2).mean()

        aux = cv2(probs.sum(dim=1))  # importance
        if noise is not None:
            sigma = c.router_noise / c.experts
            threshold = noisy.gather(-1, top[..., -1:])  # the k-th largest noisy logit
            load = cv2(torch.special.ndtr((logits - threshold) / sigma).mean(dim=1))
            aux = 0.5 * (aux + load)
        return x, aux


class TorchViT(nn.Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        self.c = c
        d = c.dim
        self.patch_embed = nn.Conv2d(c.channels, d, c.patch_size, stride=c.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, c.num_tokens, d))
        self.blocks = nn.ModuleList(TorchBlock(c, c.is_moe_block(i)) for i in range(c.layers))
        if c.is_moe and c.routing != "token":
            self.router = nn.Linear(d, c.experts, bias=False)
        self.norm = nn.LayerNorm(d, eps=1e-6)
        self.head = nn.Linear(d, c.num_classes)

    def forward(self, images_nhwc, noises=None):
        c = self.c
        x = self.patch_embed(images_nhwc.permute(0, 3, 1, 2)).flatten(2).transpose(1, 2)  # (B, P, D)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        router_logits, combine, aux = None, None, []
        for i, block in enumerate(self.blocks):
            if not c.is_moe_block(i):
                x = block.forward_dense(x)
            elif c.routing == "token":
                x, a = block.forward_token_routed(x, c, None if noises is None else noises[len(aux)])
                aux.append(a)
            else:
                if combine is None:
                    r = x[:, 0] if c.router_input == "class_token" else x[:, 1:].mean(dim=1)
                    router_logits = self.router(r)
                    probs = torch.softmax(router_logits, dim=-1)
                    top = torch.topk(router_logits, c.k, dim=-1).indices
                    combine = torch.zeros_like(probs).scatter(1, top, probs.gather(1, top))
                x = block.forward_image_routed(x, combine)
        return self.head(self.norm(x)[:, 0]), router_logits, aux

    def loss(self, logits, router_logits, aux, labels, class_to_group):
        c = self.c
        total = F.cross_entropy(logits, labels)
        if router_logits is not None:
            total = total + c.router_weight * F.cross_entropy(router_logits, class_to_group[labels])
        if aux:
            total = total + c.balance_weight * sum(aux)
        return total


# ---------------------------------------------------------------------------------------------------
# moving weights between the two layouts (the table in tinymoe/models/vit.py)
# ---------------------------------------------------------------------------------------------------
def to_torch_layout(name: str, value: np.ndarray, c: ModelConfig) -> dict[str, np.ndarray]:
    """One tinymoe parameter (or its gradient) -> the PyTorch parameter(s) it becomes."""
    if name == "patch_embed.weight":  # (p·p·c, D) rows (py, px, channel) -> Conv2d (D, c, p, p)
        p = c.patch_size
        return {name: value.reshape(p, p, c.channels, c.dim).transpose(3, 2, 0, 1)}
    if name == "patch_embed.bias":
        return {name: value}
    if ".experts." in name:  # blocks.i.experts.fc1_weight (E, in, out) -> blocks.i.experts.e.fc1.weight (out, in)
        prefix, field = name.rsplit(".", 1)
        layer, kind = field.split("_")
        return {
            f"{prefix}.{e}.{layer}.{kind}": (value[e].T if kind == "weight" else value[e])
            for e in range(value.shape[0])
        }
    torch_name = re.sub(r"\.attn\.", ".", name)  # the reference keeps qkv/proj directly on the block
    if name.endswith(".weight") and value.ndim == 2:  # every Linear (incl. routers): (in, out) -> (out, in)
        return {torch_name: value.T}
    return {torch_name: value}


def load_into_torch(model: VisionTransformer, ref: TorchViT):
    converted = {}
    for name, p in model.named_parameters():
        converted.update(to_torch_layout(name, p.data, model.config))
    own = dict(ref.named_parameters())
    assert set(converted) == set(own), (set(converted) ^ set(own))
    with torch.no_grad():
        for name, value in converted.items():
            assert own[name].shape == value.shape, name
            own[name].copy_(torch.from_numpy(np.ascontiguousarray(value)))


# ---------------------------------------------------------------------------------------------------
# the comparisons
# ---------------------------------------------------------------------------------------------------
CASES = {
    "dense": dict(moe_layers=0),
    "superclass_k1": dict(k=1),
    "superclass_k2": dict(k=2),
    "superclass_k2_mean_tokens": dict(k=2, router_input="mean_tokens"),
    "token_k2_noise_off": dict(routing="token", k=2, router_noise=0.0, capacity_factor=0.6),
    "token_k1_noisy": dict(routing="token", k=1, capacity_factor=1.0),
}


def build(case, dtype):
    config = ModelConfig(layers=3, dim=16, heads=2, image_size=8, patch_size=4, num_classes=6, moe_layers=2,
                         experts=4).replace(**CASES[case])
    model = VisionTransformer(config, rng=0, dtype=dtype)
    rng = np.random.default_rng(1)
    for p in model.parameters():  # beyond the init scale, so that routing and every path matter
        p.data[...] = (0.4 * rng.standard_normal(p.shape)).astype(dtype)
    groups = np.array([0, 1, 2, 3, 1, 2])
    if config.is_moe and config.routing == "superclass":
        model.set_class_to_group(groups)
    ref = TorchViT(config).to(torch.float64 if dtype == np.float64 else torch.float32)
    load_into_torch(model, ref)
    images = rng.standard_normal((6, 8, 8, 3)).astype(dtype)
    labels = np.array([0, 1, 2, 3, 4, 5])
    return config, model, ref, images, labels, groups


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_loss_and_every_gradient_match_pytorch(case):
    torch.set_num_threads(1)
    config, model, ref, images, labels, groups = build(case, np.float64)
    out = model(images, rng=np.random.default_rng(5))
    terms = model.loss(out, labels)
    terms.total.backward()

    noises = [torch.from_numpy(r.noise) for r in out.token_routing] if config.router_noise > 0 else None
    if config.routing == "token":
        assert any(r.dropped_fraction > 0 for r in out.token_routing)  # the capacity path is exercised
    logits, router_logits, aux = ref(torch.from_numpy(images), noises)
    loss = ref.loss(logits, router_logits, aux, torch.from_numpy(labels), torch.from_numpy(groups))
    loss.backward()

    np.testing.assert_allclose(out.logits.data, logits.detach().numpy(), rtol=1e-10, atol=1e-12)
    if router_logits is not None:
        np.testing.assert_allclose(out.routing.router_logits.data, router_logits.detach().numpy(), rtol=1e-10)
    assert terms.total.item() == pytest.approx(loss.item(), rel=1e-10)
    torch_grads = {n: p.grad for n, p in ref.named_parameters()}
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} has no gradient"
        for torch_name, ours in to_torch_layout(name, p.grad, config).items():
            theirs = torch_grads[torch_name]
            theirs = np.zeros_like(ours) if theirs is None else theirs.numpy()
            np.testing.assert_allclose(ours, theirs, rtol=1e-8, atol=1e-11, err_msg=f"gradient of {name} ({torch_name})")


@pytest.mark.parametrize("case", ["dense", "superclass_k2", "token_k2_noise_off"])
def test_float32_logits_match_pytorch(case):
    torch.set_num_threads(1)
    config, model, ref, images, labels, groups = build(case, np.float32)
    model.eval(), ref.eval()
    logits, _, _ = ref(torch.from_numpy(images))
    np.testing.assert_allclose(model(images).logits.data, logits.detach().numpy(), rtol=1e-4, atol=1e-5)
