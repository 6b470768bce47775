"""Data parallelism on threads (tinymoe.parallel): a batch split into shards must give the gradient of
the whole batch, reproducibly, and refuse the one loss that does not split (token routing)."""

import os
import subprocess
import sys
import threading

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinymoe.lab import teacher_forced_forward
from tinymoe import kernels, no_grad
from tinymoe.data import make_synthetic
from tinymoe.evaluation import predict
from tinymoe.models import ModelConfig, build_model
from tinymoe.parallel import ShardPool, shard_bounds
from tinymoe.tensor import Tensor, is_grad_enabled
from tinymoe.training import TrainingDiverged
from tinymoe.testing.trainers import tiny_trainer

TINY = ModelConfig(layers=3, dim=16, heads=2, image_size=16, patch_size=8, num_classes=6, moe_layers=2, experts=3)


@given(batch=st.integers(1, 300), shards=st.integers(1, 8))
def test_shard_bounds_cover_the_batch_in_order_with_near_equal_sizes(batch, shards):
    bounds = shard_bounds(batch, shards)
    assert len(bounds) == min(batch, shards)
    assert bounds[0][0] == 0 and bounds[-1][1] == batch
    assert all(stop == start for (_, stop), (start, _) in zip(bounds, bounds[1:]))  # contiguous
    sizes = [b - a for a, b in bounds]
    assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1


@pytest.fixture(scope="module")
def train():
    return make_synthetic(n_groups=3, classes_per_group=2, images_per_class=12, size=16, seed=1)


def _trainer(tmp, train, config, dtype=np.float32, **cfg):
    # 12-image batches: 6 steps per epoch, split 6 + 6 over two shards (or 4 + 4 + 4 over three).
    return tiny_trainer(tmp, train, config, dtype=dtype, **({"epochs": 2, "batch_size": 12} | cfg))


def _grads(model):
    return {name: (None if p.grad is None else p.grad.copy()) for name, p in model.named_parameters()}


CASES = {
    "dense": dict(moe_layers=0),
    "superclass_k1": dict(k=1),
    "superclass_k2_mean_tokens": dict(k=2, router_input="mean_tokens"),
    "learned": dict(routing="learned"),
    "random": dict(routing="random"),
    "teacher_forcing": dict(),  # with the lab's teacher-forced training step (FORWARDS)
}
FORWARDS = {"teacher_forcing": teacher_forced_forward}


@pytest.mark.parametrize("backend", ["reference", "numba"])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("shards", [2, 3])
def test_sharded_gradient_equals_the_whole_batch_gradient(tmp_path, train, case, shards, backend):
    """float64: the shards' gradients, each weighted by its share of the batch and added, are the
    gradient of the whole batch's mean loss. 7 images on 2 or 3 shards: unequal shard sizes. With the
    Numba backend the shard threads call the parallel kernels concurrently (thread-safe layer)."""
    with kernels.using(backend):
        _check_sharded_gradient(tmp_path, train, case, shards)


def _check_sharded_gradient(tmp_path, train, case, shards):
    config = TINY.replace(**CASES[case])
    rng = np.random.default_rng(0)
    x = rng.standard_normal((7, 16, 16, 3))
    y = rng.integers(0, 6, 7)

    whole = _trainer(tmp_path / "a", train, config, dtype=np.float64, forward=FORWARDS.get(case))
    whole.optimizer.zero_grad()
    values_whole, out_whole = whole._forward_backward(whole.model, x, y, np.random.default_rng(0), weight=None)

    sharded = _trainer(tmp_path / "b", train, config, dtype=np.float64, shards=shards, forward=FORWARDS.get(case))
    values_sharded, out_sharded = sharded._sharded_forward_backward(x, y)

    np.testing.assert_allclose(out_sharded.logits.data, out_whole.logits.data, rtol=1e-12, atol=1e-12)
    assert values_sharded.keys() == values_whole.keys()
    for key in values_whole:
        assert values_sharded[key] == pytest.approx(values_whole[key], rel=1e-12)
    a, b = _grads(whole.model), _grads(sharded.model)
    for name in a:
        if a[name] is None:
            assert b[name] is None or not np.any(b[name]), name
        else:
            np.testing.assert_allclose(b[name], a[name], rtol=1e-9, atol=1e-12, err_msg=name)
    if config.is_moe:
        np.testing.assert_array_equal(out_sharded.expert_counts(), out_whole.expert_counts())
    for replica in sharded.replicas:  # released after being added
        assert all(p.grad is None for p in replica.parameters())


def test_sharded_runs_are_reproducible_and_train(tmp_path, train):
    """Same seed and shard count -> bit-identical parameters, even with random masks (stochastic depth
    and expert dropout drawn per shard); and the sharded run does learn."""
    config = TINY.replace(drop_path=0.2, expert_dropout=0.1)
    runs = [_trainer(tmp_path / name, train, config, shards=2) for name in "ab"]
    summaries = [t.run() for t in runs]
    for (name, p), q in zip(runs[0].model.named_parameters(), runs[1].model.parameters()):
        np.testing.assert_array_equal(p.data, q.data, err_msg=name)
    assert summaries[0].history[-1]["train_loss"] == summaries[1].history[-1]["train_loss"]
    assert summaries[0].history[-1]["train_loss"] < summaries[0].history[0]["train_loss"] + 0.5


def test_token_routing_refuses_shards(tmp_path, train):
    with pytest.raises(ValueError, match="token routing"):
        _trainer(tmp_path, train, TINY.replace(routing="token"), shards=2)


def test_a_nan_in_one_shard_stops_the_step(tmp_path, train):
    trainer = _trainer(tmp_path, train, TINY, shards=2)
    x = np.zeros((6, 16, 16, 3), np.float32)
    x[5] = np.nan  # only in the second shard
    with pytest.raises(TrainingDiverged, match="NaN"):
        trainer.train_step(x, np.zeros(6, np.int64), lr=1e-3)


@pytest.mark.parametrize("routing", ["superclass", "token"])
def test_sharded_prediction_equals_unsharded(train, routing):
    model = build_model(TINY.replace(routing=routing), seed=3, dtype=np.float64)
    if routing == "superclass":
        model.set_class_to_group(train.class_to_group)
    one = predict(model, train.images[:23], batch_size=10)
    two = predict(model, train.images[:23], batch_size=10, shards=2)
    np.testing.assert_allclose(two.logits, one.logits, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(two.expert_counts, one.expert_counts)
    assert model.training  # predict restores the mode it found


def test_no_grad_is_per_thread():
    """One thread inside no_grad() must not switch recording off for another (the shard threads of
    training run while an evaluation thread might not)."""
    seen = {}
    inside, leave = threading.Event(), threading.Event()

    def evaluating():
        with no_grad():
            inside.set()
            leave.wait(5)

    worker = threading.Thread(target=evaluating)
    worker.start()
    inside.wait(5)
    w = Tensor(np.ones(3), requires_grad=True)
    seen["recorded"] = (w * 2.0).requires_grad
    seen["enabled"] = is_grad_enabled()
    leave.set()
    worker.join()
    assert seen == {"recorded": True, "enabled": True}


def test_shard_pool_raises_a_shards_error_in_the_caller():
    pool = ShardPool(2)

    def fn(index, start, stop):
        if index == 1:
            raise ArithmeticError(f"shard {index} [{start}, {stop})")
        return start

    with pytest.raises(ArithmeticError, match=r"shard 1 \[2, 4\)"):
        pool.run(fn, pool.bounds(4))
    assert pool.bounds(5) == shard_bounds(5, 2) == [(0, 2), (2, 5)]
    assert pool.run(lambda i, a, b: (i, a, b), pool.bounds(5)) == [(0, 0, 2), (1, 2, 5)]
    pool.close()


def test_an_unsafe_numba_threading_layer_is_refused_with_advice():
    """Numba's 'workqueue' layer aborts the process when two threads call parallel kernels: a pool of
    shards must refuse it up front, saying what to do."""
    env = dict(os.environ, NUMBA_THREADING_LAYER="workqueue")
    env.pop("NUMBA_DISABLE_JIT", None)
    code = "from tinymoe.parallel import ShardPool; ShardPool(2)"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "thread-safe Numba threading layer" in done.stderr and "--threads 1" in done.stderr


def test_command_line_threads_become_shards_with_single_threaded_blas(monkeypatch):
    """--threads N: N shards, BLAS on one thread per shard (no oversubscription), a Numba pool of N;
    token routing (shard=False) multi-threads the ops instead."""
    from tinymoe.train import apply_threads

    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS", "TINYMOE_KERNELS"):
        monkeypatch.delenv(var, raising=False)  # restored after the test
    monkeypatch.setitem(sys.modules, "numpy", sys.modules["numpy"])  # already imported: a warning only
    assert apply_threads(2) == (2, 2)
    assert os.environ["OPENBLAS_NUM_THREADS"] == "1" and os.environ["NUMBA_NUM_THREADS"] == "2"
    assert apply_threads(2, shard=False) == (2, 1)
    assert os.environ["OPENBLAS_NUM_THREADS"] == "2" and os.environ["NUMBA_NUM_THREADS"] == "2"


def test_a_sharded_run_stopped_and_resumed_equals_one_that_never_stopped(tmp_path, train):
    config = TINY.replace(drop_path=0.1)
    straight = _trainer(tmp_path / "a", train, config, shards=2)
    straight.run()
    first = _trainer(tmp_path / "b", train, config, shards=2, max_steps=4)  # inside epoch 1 (6 steps of 12 images per epoch)
    assert not first.run().completed
    second = _trainer(tmp_path / "b", train, config, shards=2)
    assert second.run(resume=True).completed
    for (name, p), q in zip(straight.model.named_parameters(), second.model.parameters()):
        np.testing.assert_array_equal(p.data, q.data, err_msg=name)


def test_resuming_with_another_shard_count_is_refused(tmp_path, train):
    """The shard count changes the numbers (each shard draws its own masks), so a run continues only
    with the count it started with."""
    _trainer(tmp_path, train, TINY, shards=2, max_steps=2).run()
    with pytest.raises(ValueError, match="shards"):
        _trainer(tmp_path, train, TINY, shards=1).run(resume=True)
