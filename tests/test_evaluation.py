"""tinymoe.evaluation beyond top-1: routing each image to an expert chosen by the caller (`experts=`),
and what the router's mistakes cost (top-1 split by routed right / wrong, and the oracle's top-1)."""

import numpy as np
import pytest

from tinymoe.data import make_synthetic
from tinymoe.evaluation import accuracy_from_logits, evaluate, predict
from tinymoe.models import ModelConfig, build_model

TINY = ModelConfig(layers=3, dim=16, heads=2, image_size=16, patch_size=8, num_classes=6, moe_layers=2, experts=3)


@pytest.fixture(scope="module")
def data():
    return make_synthetic(n_groups=3, classes_per_group=2, images_per_class=12, size=16, seed=1)


@pytest.fixture(scope="module")
def moe(data):
    model = build_model(TINY, seed=3, dtype=np.float64)
    model.set_class_to_group(data.class_to_group)
    return model


def test_forcing_the_routers_own_choice_changes_nothing_and_another_choice_does(data, moe):
    """`experts=` replaces only the router's decision: handing it back its own choices gives the same logits
    (over batches of 10 and two shards, so each image's choice must reach exactly that image)."""
    images = data.images[:23]
    own = predict(moe, images, batch_size=10)
    chosen = own.experts[:, 0]
    for shards in (1, 2):
        forced = predict(moe, images, batch_size=10, shards=shards, experts=chosen)
        np.testing.assert_allclose(forced.logits, own.logits, rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(forced.experts[:, 0], chosen)
    other = (chosen + 1) % TINY.experts  # every image to another expert
    moved = predict(moe, images, batch_size=10, shards=2, experts=other)
    np.testing.assert_array_equal(moved.experts[:, 0], other)
    assert np.abs(moved.logits - own.logits).max(axis=1).min() > 1e-6  # every image's output changed
    with pytest.raises(ValueError, match=r"one expert per image, shape \(23,\)"):
        predict(moe, images, experts=chosen[:5])


def test_a_chosen_expert_is_gated_by_the_routers_confidence_in_its_own_pick(data):
    """Teacher forcing gates the forced expert by its own probability (the router learns through it);
    a caller's choice (`experts=`) gets the router's top probabilities instead, so an expert the router
    ranked low is not silenced by a tiny gate. With k = 2 the second choice is the router's best other."""
    model = build_model(TINY.replace(k=2), seed=3, dtype=np.float64)
    model.eval()
    x = data.images[:6].astype(np.float64)
    own = model(x).routing
    probs = own.probs.data
    last = np.argsort(probs, axis=1)[:, 0]  # each image's least likely expert
    forced = model(x, experts=last).routing
    np.testing.assert_array_equal(forced.experts[:, 0], last)
    np.testing.assert_allclose(forced.gates.data, np.sort(probs, axis=1)[:, ::-1][:, :2], rtol=1e-12)
    tokens = model.embed(x)
    for block in list(model.blocks)[: model.config.dense_layers]:
        tokens = block(tokens)  # what the router reads: the tokens after the last dense block
    teacher = model.router(tokens, forced=last)  # gates_from="choice": the forced expert's own probability
    np.testing.assert_allclose(teacher.gates.data[:, 0], probs[np.arange(6), last], rtol=1e-12)
    with pytest.raises(ValueError, match="gates_from must be"):
        model.router(tokens, forced=last, gates_from="uniform")


def test_choosing_experts_needs_per_image_routing(data):
    for config, what in ((TINY.dense(), "a dense model"), (TINY.replace(routing="token"), "routing='token'")):
        model = build_model(config, seed=0)
        with pytest.raises(ValueError, match=what):
            model(data.images[:2].astype(np.float32), experts=np.zeros(2, np.int64))


def test_top1_split_by_routing_and_the_oracle(data, moe):
    images, labels = data.images, data.labels
    result = evaluate(moe, images, labels, batch_size=16, oracle=True)
    pred = predict(moe, images, batch_size=16)
    truth = data.class_to_group[labels]
    right = pred.experts[:, 0] == truth
    assert 0 < right.sum() < right.size  # an untrained router: some of each, so both parts are defined
    correct = np.argmax(pred.logits, axis=1) == labels
    assert result.router_accuracy == pytest.approx(100 * right.mean())
    assert result.top1_routed_right == pytest.approx(100 * correct[right].mean())
    assert result.top1_routed_wrong == pytest.approx(100 * correct[~right].mean())
    # top-1 is the two parts weighted by their sizes
    assert result.top1 == pytest.approx(right.mean() * result.top1_routed_right
                                        + (1 - right.mean()) * result.top1_routed_wrong)
    oracle = predict(moe, images, batch_size=16, experts=truth)
    assert result.oracle_top1 == pytest.approx(accuracy_from_logits(oracle.logits, labels)[0])
    assert evaluate(moe, images, labels).oracle_top1 is None  # only on request: it costs a second pass
    dense = build_model(TINY.dense(), seed=0)
    assert evaluate(dense, images, labels).top1_routed_right is None
    with pytest.raises(ValueError, match=r"evaluate\(oracle=True\) needs a per-image-routed MoE"):
        evaluate(dense, images, labels, oracle=True)
