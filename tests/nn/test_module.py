"""Module bookkeeping: names, state dicts and their errors, buffers, modes, dtypes."""

import numpy as np
import pytest

from tinymoe import Tensor, ops
from tinymoe.gradcheck import gradcheck
from tinymoe.nn import LayerNorm, Linear, Module, ModuleList, Parameter


class Block(Module):
    def __init__(self, dim, rng):
        super().__init__()
        self.norm = LayerNorm(dim)
        self.fc = Linear(dim, dim, rng=rng)

    def forward(self, x):
        return x + self.fc(ops.gelu(self.norm(x)))


class Net(Module):
    def __init__(self, dim=4, depth=2, seed=0):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.blocks = ModuleList([Block(dim, rng) for _ in range(depth)])
        self.head = Linear(dim, 3, bias=False, rng=rng)
        self.register_buffer("class_to_group", np.array([0, 0, 1]))

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def test_parameters_are_named_by_their_attribute_path():
    net = Net()
    assert [name for name, _ in net.named_parameters()] == [
        "blocks.0.norm.weight", "blocks.0.norm.bias", "blocks.0.fc.weight", "blocks.0.fc.bias",
        "blocks.1.norm.weight", "blocks.1.norm.bias", "blocks.1.fc.weight", "blocks.1.fc.bias",
        "head.weight",
    ]  # fmt: skip
    assert net.num_parameters() == 2 * (4 + 4 + 16 + 4) + 12
    assert [name for name, _ in net.named_modules()][:3] == ["", "blocks", "blocks.0"]
    assert len(net.blocks) == 2 and net.blocks[1] is list(net.blocks)[1]


def test_a_shared_parameter_is_listed_once():
    net = Net()
    net.blocks[1].fc.weight = net.blocks[0].fc.weight  # weight tying
    names = [name for name, _ in net.named_parameters()]
    assert "blocks.1.fc.weight" not in names and "blocks.0.fc.weight" in names
    assert net.num_parameters() == 2 * (4 + 4 + 16 + 4) + 12 - 16


def test_reassigning_and_deleting_update_the_registry():
    net = Net()
    net.head = Linear(4, 5, rng=np.random.default_rng(1))
    assert ("head.bias", (5,)) in [(n, p.shape) for n, p in net.named_parameters()]
    del net.head
    assert not any(n.startswith("head") for n, _ in net.named_parameters())
    net.blocks[0].fc.bias = None  # a parameter replaced by a plain value is no longer a parameter
    assert "blocks.0.fc.bias" not in dict(net.named_parameters())


def test_state_dict_round_trip_reproduces_the_model():
    x = Tensor(np.random.default_rng(5).standard_normal((2, 3, 4)).astype(np.float32))
    source, target = Net(seed=0), Net(seed=1)
    assert not np.allclose(source(x).data, target(x).data)
    state = source.state_dict()
    assert sorted(state) == sorted([n for n, _ in source.named_parameters()] + ["class_to_group"])
    weight_before = target.head.weight
    target.load_state_dict(state)
    np.testing.assert_array_equal(source(x).data, target(x).data)
    assert target.head.weight is weight_before  # loaded in place: optimizers keep their references


def test_state_dict_is_a_snapshot():
    net = Net()
    state = net.state_dict()
    net.head.weight.data += 1.0
    assert not np.allclose(state["head.weight"], net.head.weight.data)


def test_loading_casts_to_the_model_dtype():
    net = Net()
    state = {name: value.astype(np.float64) for name, value in Net(seed=3).state_dict().items()}
    net.load_state_dict(state)
    assert net.head.weight.dtype == np.float32
    np.testing.assert_allclose(net.head.weight.data, state["head.weight"], rtol=1e-7)


def test_missing_and_unexpected_names_are_all_listed():
    net = Net()
    state = net.state_dict()
    del state["head.weight"], state["blocks.1.norm.bias"]
    state["head.bias"] = np.zeros(3, dtype=np.float32)
    with pytest.raises(KeyError) as info:
        net.load_state_dict(state)
    message = str(info.value)
    assert "missing 2 name(s): ['blocks.1.norm.bias', 'head.weight']" in message
    assert "unexpected 1 name(s): ['head.bias']" in message
    assert "strict=False" in message

    result = net.load_state_dict(state, strict=False)
    assert result.missing == ["blocks.1.norm.bias", "head.weight"] and result.unexpected == ["head.bias"]


def test_a_shape_mismatch_names_the_parameter_and_both_shapes_and_changes_nothing():
    net = Net()
    before = net.state_dict()
    state = Net(seed=9).state_dict()
    state["blocks.0.fc.weight"] = np.zeros((4, 5), dtype=np.float32)
    with pytest.raises(ValueError, match=r"blocks.0.fc.weight: model has shape \(4, 4\), state dict has shape \(4, 5\)"):
        net.load_state_dict(state)
    for name, value in net.state_dict().items():  # the failed load left every array untouched
        np.testing.assert_array_equal(value, before[name])


def test_buffers_are_saved_but_not_trained():
    net = Net()
    assert "class_to_group" not in dict(net.named_parameters())
    net.class_to_group = np.array([1, 1, 0])  # assigning to a buffer keeps it a buffer
    assert net.state_dict()["class_to_group"].tolist() == [1, 1, 0]
    other = Net()
    other.load_state_dict(net.state_dict())
    assert other.class_to_group.tolist() == [1, 1, 0]


def test_train_and_eval_set_every_module():
    net = Net()
    assert all(m.training for _, m in net.named_modules())
    assert net.eval() is net
    assert not any(m.training for _, m in net.named_modules())
    net.train()
    assert all(m.training for _, m in net.named_modules())


def test_zero_grad_forgets_every_gradient():
    net = Net()
    net(Tensor(np.ones((2, 4), dtype=np.float32))).sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())


def test_to_dtype_float64_makes_a_whole_block_checkable():
    """In float64 the block's gradients, for its input and for its parameters, match finite differences."""
    block = Block(3, np.random.default_rng(0)).to_dtype(np.float64)
    assert all(p.dtype == np.float64 for p in block.parameters())
    rng = np.random.default_rng(1)
    for p in block.parameters():  # move away from the init (zero bias, unit scale) to a generic point
        p.data += 0.3 * rng.standard_normal(p.shape)
    x = rng.standard_normal((2, 3))
    gradcheck(block, [x])

    upstream = rng.standard_normal((2, 3))
    block.zero_grad()
    block(Tensor(x)).backward(upstream)
    for name, p in block.named_parameters():
        numeric = np.zeros_like(p.data)
        for pos in np.ndindex(p.shape):
            saved = p.data[pos]
            p.data[pos] = saved + 1e-6
            plus = np.sum(upstream * block(Tensor(x)).data)
            p.data[pos] = saved - 1e-6
            minus = np.sum(upstream * block(Tensor(x)).data)
            p.data[pos] = saved
            numeric[pos] = (plus - minus) / 2e-6
        np.testing.assert_allclose(p.grad, numeric, rtol=1e-6, atol=1e-7, err_msg=name)


def test_to_dtype_refuses_integer_types():
    with pytest.raises(TypeError, match="to_dtype: parameters must be floating-point"):
        Net().to_dtype(np.int32)


def test_forgetting_super_init_says_so():
    class Broken(Module):
        def __init__(self):
            self.w = Parameter(np.ones(2))

    with pytest.raises(RuntimeError, match=r"call super\(\).__init__\(\) at the top of Broken.__init__"):
        Broken()


def test_parameter_copies_and_checks_its_values():
    values = np.ones(3, dtype=np.float32)
    p = Parameter(values)
    values[0] = 5.0
    assert p.data[0] == 1.0 and p.requires_grad and p.dtype == np.float32
    assert Parameter(values, dtype=np.float64).dtype == np.float64
    with pytest.raises(TypeError, match="Parameter: values must be floating-point, got dtype int64"):
        Parameter(np.arange(3))


def test_repr_shows_the_tree():
    text = repr(Net(depth=1))
    assert "(blocks): ModuleList(" in text
    assert "(0): Block(" in text
    assert "(fc): Linear(in_features=4, out_features=4, bias=True)" in text
    assert "(head): Linear(in_features=4, out_features=3, bias=False)" in text


def test_modulelist_accepts_only_modules():
    with pytest.raises(TypeError, match="ModuleList.append: expected a Module, got int"):
        ModuleList([1])
