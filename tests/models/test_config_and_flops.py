"""Model config validation, and the analytic FLOP / parameter counter against the paper and the CLI.

(The counter is also checked against the multiply-adds a forward pass really performs, in test_vit.py.)
"""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinymoe import flops as flops_cli
from tinymoe.models.config import ConfigError, ModelConfig, default_heads
from tinymoe.models.flops import count, mlp_params


# ---------------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dim, heads", [(384, 6), (192, 3), (96, 3), (64, 2), (768, 12), (1024, 16)])
def test_default_heads_follow_the_paper_and_vit(dim, heads):
    assert default_heads(dim) == heads
    assert ModelConfig(dim=dim).heads == heads


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"dim": 64, "heads": 3}, "not divisible by heads=3"),
        ({"dim": 100}, "pass heads= explicitly"),
        ({"image_size": 64, "patch_size": 7}, "not divisible by patch_size=7"),
        ({"experts": 4, "k": 5}, "k=5 experts per input cannot exceed experts=4"),
        ({"layers": 2, "moe_layers": 3}, "moe_layers=3 must be between 0"),
        ({"routing": "soft"}, "routing='soft' is not one of"),
        ({"router_input": "cls"}, "router_input='cls' is not one of"),
        ({"capacity_factor": 0.0}, "capacity factors must be > 0"),
        ({"layers": 0}, "layers must be a positive integer"),
        ({"dim": 64.0}, "dim must be a positive integer"),
    ],
)
def test_invalid_configs_raise_clear_errors(changes, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig(**changes)


def test_config_round_trips_through_a_dict_and_reports_differences():
    c = ModelConfig(layers=12, dim=192, k=2, routing="token")
    assert ModelConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    assert c.dense().moe_layers == 0 and not c.dense().is_moe and c.dense().dim == 192
    assert c.differences(c.replace(dim=96, k=1)) == {"dim": (192, 96), "k": (2, 1)}
    with pytest.raises(ConfigError, match=r"unknown config fields \['width'\]"):
        ModelConfig.from_dict({**c.to_dict(), "width": 3})


def test_derived_sizes():
    c = ModelConfig(layers=6, dim=64, image_size=224, patch_size=32)
    assert (c.num_patches, c.num_tokens, c.patch_dim, c.hidden_dim, c.head_dim) == (49, 50, 3072, 256, 32)
    assert [c.is_moe_block(i) for i in range(6)] == [False] * 4 + [True] * 2


# ---------------------------------------------------------------------------------------------------
# FLOPs against the paper (Daxberger et al. 2023, 224 px, patch 32, 1000 classes)
# ---------------------------------------------------------------------------------------------------
PAPER_FLOPS = {(6, 64): 54e6, (12, 192): 618e6, (12, 384): 2297e6}


@pytest.mark.parametrize("layers, dim", sorted(PAPER_FLOPS))
def test_flops_match_the_paper_within_3_percent(layers, dim):
    config = ModelConfig(layers=layers, dim=dim, image_size=224, patch_size=32, num_classes=1000)
    for c in (config.dense(), config):  # the MoE (k=1) costs what the dense model costs, plus a tiny router
        assert count(c).flops == pytest.approx(PAPER_FLOPS[(layers, dim)], rel=0.03)
    moe, dense = count(config), count(config.dense())
    assert moe.flops - dense.flops == 2 * dim * config.experts  # exactly one router matmul per image
    # Elementwise work is not counted, so the count must stay *below* the paper's measured numbers.
    assert dense.flops < PAPER_FLOPS[(layers, dim)]


def test_vit_tiny_parameter_count_matches_timm():
    # timm's vit_tiny_patch16_224 has 5,717,416 parameters (patch 16: 197 tokens, 768-value patches).
    c = ModelConfig(layers=12, dim=192, image_size=224, patch_size=16, num_classes=1000, moe_layers=0)
    assert count(c).params == 5_717_416


@given(
    layers=st.integers(1, 12),
    moe_fraction=st.floats(0, 1),
    experts=st.integers(1, 12),
    data=st.data(),
)
def test_moe_parameters_and_flops_scale_as_expected(layers, moe_fraction, experts, data):
    moe_layers = round(moe_fraction * layers)
    k = data.draw(st.integers(1, experts))
    c = ModelConfig(layers=layers, dim=64, experts=experts, k=k, moe_layers=moe_layers)
    moe, dense = count(c), count(c.dense())
    per_mlp = mlp_params(c.dim, c.hidden_dim)
    router = c.dim * experts if moe_layers else 0
    assert moe.params == dense.params + moe_layers * (experts - 1) * per_mlp + router
    assert moe.active_params == dense.params + moe_layers * (k - 1) * per_mlp + router
    # Each MoE block runs k expert MLPs on all N tokens of the image.
    n, d, h = c.num_tokens, c.dim, c.hidden_dim
    assert moe.total_macs == dense.total_macs + moe_layers * (k - 1) * 2 * n * d * h + router


def test_token_routing_counts_a_router_per_block_and_token():
    c = ModelConfig(layers=6, dim=64, routing="token", k=2)
    moe, dense = count(c), count(c.dense())
    n, d, h = c.num_tokens, c.dim, c.hidden_dim
    assert moe.macs["router"] == 2 * n * d * 10
    assert moe.total_macs == dense.total_macs + 2 * 2 * n * d * h + 2 * n * d * 10
    assert moe.params - count(c.replace(routing="superclass")).params == d * 10  # 2 routers instead of 1


# ---------------------------------------------------------------------------------------------------
# the CLI
# ---------------------------------------------------------------------------------------------------
def test_cli_prints_dense_and_moe_rows(capsys):
    assert flops_cli.main(["--layers", "6", "--dim", "64", "--image-size", "224", "--patch-size", "32",
                           "--classes", "1000"]) == 0
    out = capsys.readouterr().out
    dense = count(ModelConfig(layers=6, dim=64, image_size=224, patch_size=32, num_classes=1000, moe_layers=0))
    assert "dense" in out and "MoE E=10 k=1 L=2" in out
    assert f"{dense.flops / 1e6:.1f}M" in out


def test_cli_json_and_errors(capsys):
    assert flops_cli.main(["--layers", "12", "--dim", "192", "--experts", "8", "--k", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    c = ModelConfig(layers=12, dim=192, image_size=224, patch_size=32, num_classes=1000, experts=8, k=2)
    assert out["moe"]["flops"] == count(c).flops and out["moe"]["params"] == count(c).params
    assert out["dense"]["active_params"] == count(c.dense()).params
    assert flops_cli.main(["--layers", "6", "--dim", "64", "--k", "11"]) == 2
    assert "k=11 experts per input cannot exceed experts=10" in capsys.readouterr().err
