"""tinymoe.evaluation beyond top-1: routing each image to an expert chosen by the caller (`experts=`),
what the router's mistakes cost (top-1 split by routed right / wrong, and the oracle's top-1), and how
much of a difference between two models the choice of val images decides (paired_difference)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinymoe.data import make_synthetic
from tinymoe.evaluation import accuracy_from_logits, evaluate, predict, predict_with_experts
from tinymoe.lab import forced_routing, forward_with_experts, paired_difference
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
        forced = predict_with_experts(moe, images, chosen, batch_size=10, shards=shards)
        np.testing.assert_allclose(forced.logits, own.logits, rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(forced.experts[:, 0], chosen)
    other = (chosen + 1) % TINY.experts  # every image to another expert
    moved = predict_with_experts(moe, images, other, batch_size=10, shards=2)
    np.testing.assert_array_equal(moved.experts[:, 0], other)
    assert np.abs(moved.logits - own.logits).max(axis=1).min() > 1e-6  # every image's output changed
    with pytest.raises(ValueError, match=r"one expert per image, shape \(23,\)"):
        predict_with_experts(moe, images, chosen[:5])


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
    forced = forward_with_experts(model, x, last).routing
    np.testing.assert_array_equal(forced.experts[:, 0], last)
    np.testing.assert_allclose(forced.gates.data, np.sort(probs, axis=1)[:, ::-1][:, :2], rtol=1e-12)
    tokens = model.embed(x)
    for block in list(model.blocks)[: model.config.dense_layers]:
        tokens = block(tokens)  # what the router reads: the tokens after the last dense block
    teacher = forced_routing(model.router(tokens), last)  # gates_from="choice": the forced expert's own probability
    np.testing.assert_allclose(teacher.gates.data[:, 0], probs[np.arange(6), last], rtol=1e-12)
    with pytest.raises(ValueError, match="gates_from must be"):
        forced_routing(model.router(tokens), last, gates_from="uniform")


def test_choosing_experts_needs_per_image_routing(data):
    for config, what in ((TINY.dense(), "a dense model"), (TINY.replace(routing="token"), "routing='token'")):
        model = build_model(config, seed=0)
        with pytest.raises(ValueError, match=what):
            forward_with_experts(model, data.images[:2].astype(np.float32), np.zeros(2, np.int64))


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
    oracle = predict_with_experts(moe, images, truth, batch_size=16)
    assert result.oracle_top1 == pytest.approx(accuracy_from_logits(oracle.logits, labels)[0])
    assert evaluate(moe, images, labels).oracle_top1 is None  # only on request: it costs a second pass
    dense = build_model(TINY.dense(), seed=0)
    assert evaluate(dense, images, labels).top1_routed_right is None
    with pytest.raises(ValueError, match=r"evaluate\(oracle=True\) needs a per-image-routed MoE"):
        evaluate(dense, images, labels, oracle=True)


# ------------------------------------------------------------------------------------------------
# paired_difference: Δ top-1 between two models on the same images, with its standard error
# ------------------------------------------------------------------------------------------------
def test_paired_difference_by_hand():
    """d = B right - A right per image = [0, -1, +1, +1, -1]: mean 0, sample sd 1, so the standard error
    is 1/√5 (44.72 points: five images decide nothing)."""
    a = np.array([True, True, False, False, True])
    b = np.array([True, False, True, True, False])
    result = paired_difference(a, b)
    assert (result.images, result.b_only_right, result.a_only_right) == (5, 2, 2)
    assert result.delta == pytest.approx(0.0)
    assert result.standard_error == pytest.approx(100 / np.sqrt(5))
    assert result.as_dict()["ci95"] == pytest.approx([-1.96 * 100 / np.sqrt(5), 1.96 * 100 / np.sqrt(5)])


@settings(deadline=None, max_examples=50)
@given(st.integers(2, 200).flatmap(lambda n: st.tuples(st.lists(st.booleans(), min_size=n, max_size=n),
                                                        st.lists(st.booleans(), min_size=n, max_size=n))))
def test_paired_difference_only_discordant_images_count(pair):
    """Δ and its variance follow from the discordant counts alone (b = B-only right, c = A-only right):
    Δ = (b - c)/n and Σ(d - Δ)² = b + c - nΔ²; swapping the models negates Δ and keeps the error."""
    a, b = (np.array(x, dtype=bool) for x in pair)
    n, result = a.size, paired_difference(a, b)
    only_b, only_a = int(np.sum(b & ~a)), int(np.sum(a & ~b))
    delta = (only_b - only_a) / n
    assert result.delta == pytest.approx(100 * delta, abs=1e-9)
    assert result.standard_error == pytest.approx(100 * np.sqrt((only_b + only_a - n * delta**2) / (n - 1) / n), abs=1e-9)
    swapped = paired_difference(b, a)
    assert swapped.delta == pytest.approx(-result.delta, abs=1e-9)
    assert swapped.standard_error == pytest.approx(result.standard_error, abs=1e-9)


def test_paired_difference_pooled_over_seeds_by_hand():
    """Two seeds on three images. Seed 0: d = [+1, 0, -1]; seed 1: d = [+1, +1, 0]. Per image the seeds'
    mean is [1, 0.5, -0.5]: Δ = 1/3 (the mean of the seeds' Δ's, 0 and 2/3), sample sd √(7/12)."""
    a = np.array([[False, True, True], [False, False, True]])
    b = np.array([[True, True, False], [True, True, True]])
    result = paired_difference(a, b)
    assert (result.images, result.b_only_right, result.a_only_right) == (3, 3, 1)
    assert result.delta == pytest.approx(100 / 3)
    assert result.standard_error == pytest.approx(100 * np.sqrt(7 / 12) / np.sqrt(3))


@settings(deadline=None, max_examples=50)
@given(st.integers(1, 4), st.integers(2, 100), st.integers(0, 2**32 - 1))
def test_paired_difference_pooled_is_the_mean_of_the_seeds(seeds, n, seed):
    """Pooled Δ = the mean of the per-seed Δ's; one seed's (1, N) arrays give exactly the (N,) answer; the
    pooled error is the error of the per-image mean difference (the images are shared by the seeds)."""
    rng = np.random.default_rng(seed)
    a, b = rng.random((seeds, n)) < 0.4, rng.random((seeds, n)) < 0.5
    pooled = paired_difference(a, b)
    per_seed = [paired_difference(a[s], b[s]) for s in range(seeds)]
    assert pooled.delta == pytest.approx(np.mean([r.delta for r in per_seed]), abs=1e-9)
    assert (pooled.b_only_right, pooled.a_only_right) == (sum(r.b_only_right for r in per_seed),
                                                         sum(r.a_only_right for r in per_seed))
    d = np.mean(b.astype(float) - a.astype(float), axis=0)
    assert pooled.standard_error == pytest.approx(100 * d.std(ddof=1) / np.sqrt(n), abs=1e-9)
    assert paired_difference(a[:1], b[:1]) == per_seed[0]


def test_paired_interval_covers_the_true_difference_95_percent_of_the_time():
    """Draw 2,000 val sets of 5,000 images from two correlated models whose true top-1 differ by 2 points
    (both right 20%, only A 5%, only B 7%). The paired 95% interval must contain +2 in about 95% of them.
    Treating the two accuracies as independent would give intervals ~1.8x wider, covering ~99.99%."""
    rng = np.random.default_rng(0)
    outcome = rng.choice(4, size=(2000, 5000), p=[0.20, 0.05, 0.07, 0.68])  # both / only A / only B / neither
    covered = 0
    for row in outcome:
        lo, hi = paired_difference((row == 0) | (row == 1), (row == 0) | (row == 2)).interval()
        covered += lo <= 2.0 <= hi
    assert 0.93 <= covered / 2000 <= 0.97


def test_paired_difference_refuses_what_is_not_two_equal_bool_vectors():
    with pytest.raises(ValueError, match="bool arrays of the same shape"):
        paired_difference(np.array([1, 0, 1]), np.array([True, False, True]))
    with pytest.raises(ValueError, match="bool arrays of the same shape"):
        paired_difference(np.ones(3, bool), np.ones(4, bool))
    with pytest.raises(ValueError, match="at least 2 images"):
        paired_difference(np.ones(1, bool), np.ones(1, bool))
    with pytest.raises(ValueError, match="one row per seed"):
        paired_difference(np.ones((2, 2, 3), bool), np.ones((2, 2, 3), bool))
    with pytest.raises(ValueError, match="one row per seed"):
        paired_difference(np.ones((0, 3), bool), np.ones((0, 3), bool))
