"""The checks of the exercises: one function per exercise, taking the student's module.

Each check raises AssertionError (or whatever the student's code raises) with a message saying what
is wrong, and returns a one-line summary with numbers when everything is right. The references are
tinymoe's own implementations (or a slow, obviously correct version), on seeded random inputs.
"""

from __future__ import annotations

import numpy as np

from tinymoe import Tensor


def _close(name, got, want, atol=1e-10):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{name}: shape {got.shape}, expected {want.shape}"
    worst = float(np.max(np.abs(got - want))) if got.size else 0.0
    assert worst <= atol, f"{name}: largest |difference| from the reference is {worst:.3g} (allowed {atol:g})"
    return worst


def check_backward_closure(mod) -> str:
    from tinymoe.gradcheck import gradcheck

    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4))
    s = mod.sigmoid(Tensor(x, requires_grad=True))
    _close("sigmoid forward", s.data, 1 / (1 + np.exp(-x)))
    # The closure must give the chain rule's answer inside a bigger graph, too: L = sum(sigmoid(x) * x).
    result = gradcheck(lambda t: (mod.sigmoid(t) * t).sum(), [x], raise_on_failure=False)
    assert result.ok, f"sigmoid's backward disagrees with finite differences: {result}"
    t = Tensor(x, requires_grad=True)
    mod.sigmoid(t).sum().backward()
    worst = _close("dL/dx of sum(sigmoid(x))", t.grad, np.exp(-x) / (1 + np.exp(-x)) ** 2, atol=1e-12)
    return f"sigmoid: forward and backward agree with the formulas (largest |difference| {worst:.1e})"


def check_softmax_vjp(mod) -> str:
    rng = np.random.default_rng(1)
    worst = 0.0
    for shape in [(5,), (3, 4), (2, 3, 6)]:
        x = rng.standard_normal(shape)
        y = np.exp(x - x.max(axis=-1, keepdims=True))
        y /= y.sum(axis=-1, keepdims=True)
        g = rng.standard_normal(shape)
        # Reference: the explicit Jacobian J = diag(y) - y yᵀ of every row, then gᵀ J.
        rows_y, rows_g = y.reshape(-1, shape[-1]), g.reshape(-1, shape[-1])
        want = np.stack([(np.diag(r) - np.outer(r, r)) @ h for r, h in zip(rows_y, rows_g)]).reshape(shape)
        worst = max(worst, _close(f"softmax_vjp on shape {shape}", mod.softmax_vjp(y, g), want, atol=1e-12))
    return f"softmax_vjp: equals gᵀJ on 1-, 2- and 3-d inputs (largest |difference| {worst:.1e})"


def check_topk_dispatch(mod) -> str:
    from tinymoe.models.moe import plan_dispatch, top_k

    rng = np.random.default_rng(2)
    cases = 0
    for batch, experts_n, k in [(7, 4, 1), (10, 5, 2), (6, 3, 3)]:
        probs = rng.dirichlet(np.ones(experts_n), size=batch)
        probs[0] = 1.0 / experts_n  # a row of ties: the lower expert index comes first
        experts, gates, source, sizes = mod.route(probs, k)
        want = top_k(probs, k)
        assert np.array_equal(np.asarray(experts), want), f"experts (B={batch}, E={experts_n}, k={k}): got\n{experts}\nexpected\n{want}"
        _close("gates", gates, np.take_along_axis(probs, want, axis=1), atol=0)
        plan = plan_dispatch(want, experts_n)
        assert np.array_equal(np.asarray(source), plan.source), f"source: got {source}, expected {plan.source}"
        assert np.array_equal(np.asarray(sizes), plan.group_sizes), f"group_sizes: got {sizes}, expected {plan.group_sizes}"
        cases += 1
    return f"route: experts, gates, source and group_sizes match tinymoe's router in {cases} of 3 settings (k = 1, 2, 3)"


def check_superclass_loss(mod) -> str:
    from tinymoe import ops

    rng = np.random.default_rng(3)
    class_to_group = np.array([2, 0, 1, 1, 0, 2, 3, 3])
    labels = rng.integers(0, 8, size=16)
    logits = rng.standard_normal((16, 4)) * 3
    want = ops.cross_entropy(Tensor(logits), class_to_group[labels]).item()
    got = mod.superclass_loss(logits, labels, class_to_group)
    _close("superclass_loss", got, want, atol=1e-9)
    uniform = mod.superclass_loss(np.zeros((5, 4)), labels[:5], class_to_group)
    _close("superclass_loss of a guessing router (all logits 0) = ln 4", uniform, np.log(4), atol=1e-9)
    big = mod.superclass_loss(logits * 1000, labels, class_to_group)
    assert np.isfinite(big), "superclass_loss overflows on large logits: subtract each row's maximum first"
    return f"superclass_loss: {got:.4f} = tinymoe's cross-entropy; ln 4 = {uniform:.4f} for a guessing router"


def check_load_balance(mod) -> str:
    from tinymoe.models.moe import importance_loss

    rng = np.random.default_rng(4)
    probs = rng.dirichlet(np.ones(5) * 0.5, size=(6, 9))  # (B, N, E)
    want = importance_loss(Tensor(probs)).item()
    got = mod.importance_loss(probs)
    _close("importance_loss", got, want, atol=1e-9)
    even = mod.importance_loss(np.full((2, 3, 4), 0.25))
    one = mod.importance_loss(np.tile(np.eye(4)[0], (2, 3, 1)))
    _close("importance_loss of perfectly even routing", even, 0.0, atol=1e-12)
    _close("importance_loss when one expert gets everything (E - 1)", one, 3.0, atol=1e-12)
    return f"importance_loss: {got:.4f} = tinymoe's; 0 when even, {one:.1f} = E - 1 when one expert takes all"


def check_superclasses(mod) -> str:
    from tinymoe import superclasses as sc
    from tinymoe.superclasses.algorithm import kmeans, spectral_embedding
    from tinymoe.testing.confusion import planted_confusion

    confusion, truth = planted_confusion([3, 4, 2, 3], seed=5)
    confusion[0] = 0  # a class without held-out images: its row stays zero
    graph = np.asarray(mod.confusion_graph(confusion), dtype=np.float64)
    _close("confusion_graph", graph, sc.confusion_graph(confusion), atol=1e-12)
    labels, _ = kmeans(spectral_embedding(graph, 4), 4, np.random.default_rng(0))
    found = sc.canonical_labels(labels)
    right = int(np.sum(found == truth))
    assert right == truth.size, f"clustering your graph put {right} of {truth.size} classes in their planted group"
    return f"confusion_graph: equals tinymoe's; clustering it recovers {right} of {truth.size} planted classes"


def check_paired_delta(mod) -> str:
    import json
    from pathlib import Path

    from tinymoe.lab import paired_difference

    rng = np.random.default_rng(6)
    dense_right = rng.random(2000) < 0.25
    moe_right = np.where(rng.random(2000) < 0.85, dense_right, rng.random(2000) < 0.25)  # mostly agree: paired
    want = paired_difference(dense_right, moe_right)
    delta, half = mod.paired_delta(dense_right, moe_right)
    _close("delta", delta, want.delta, atol=1e-9)
    _close("half95 (1.96 x the paired standard error)", half, (want.interval()[1] - want.interval()[0]) / 2, atol=1e-9)
    # The same on a recorded run: its per-image predictions reproduce the interval written in its record.
    results = Path(__file__).resolve().parents[2] / "bench" / "results" / "data-scale"
    record = json.loads((results / "base-seed0.json").read_text())
    with np.load(results / "predictions" / "base-seed0.npz", allow_pickle=False) as p:
        labels, dense, moe = p["labels"], p["dense"], p["moe"]
    delta, half = mod.paired_delta(dense == labels, moe == labels)
    recorded = record["paired"]
    _close("delta of the recorded base-seed0 run", delta, recorded["delta"], atol=1e-9)
    _close("half95 of the recorded base-seed0 run", half, (recorded["ci95"][1] - recorded["ci95"][0]) / 2, atol=1e-9)
    return (f"Δ and half95 equal tinymoe's; the recorded data-scale base-seed0 run gives Δ {delta:+.2f} ± {half:.2f} "
            "points from its per-image predictions")


CHECKS = {
    "backward_closure": check_backward_closure,
    "softmax_vjp": check_softmax_vjp,
    "topk_dispatch": check_topk_dispatch,
    "superclass_loss": check_superclass_loss,
    "load_balance": check_load_balance,
    "superclasses": check_superclasses,
    "paired_delta": check_paired_delta,
}
