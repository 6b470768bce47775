"""The exercises' checks (tutorials/exercises/): each FAILS on its stub, PASSES on its solution, and
fails on a plausible wrong answer, so a student's PASS means something."""

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tinymoe import Tensor

EXERCISES = Path(__file__).resolve().parent.parent / "tutorials" / "exercises"
sys.path.insert(0, str(EXERCISES))
import check  # noqa: E402
from checks import CHECKS  # noqa: E402


def test_every_exercise_has_a_stub_and_a_solution():
    stubs = {p.stem[3:] for p in EXERCISES.glob("ex_*.py")}
    solutions = {p.stem[3:] for p in (EXERCISES / "solutions").glob("ex_*.py")}
    assert stubs == solutions == set(CHECKS)


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_check_fails_on_the_stub_and_passes_on_the_solution(name):
    ok, message = check.run(name)
    assert not ok and "not done yet" in message, message
    ok, message = check.run(name, solution=True)
    assert ok, message


def _sigmoid_wrong(x):  # backward forgets the (1 - s) factor
    s = 1 / (1 + np.exp(-x.data))
    return Tensor.from_op(s, (x,), lambda g: (g * s,), "sigmoid")


def _route_renormalised(probs, k):  # gates renormalised over the k chosen: a common slip
    experts, gates, source, sizes = check.load("topk_dispatch", solution=True).route(probs, k)
    return experts, gates / gates.sum(axis=1, keepdims=True), source, sizes


def _graph_counts(confusion):  # counts instead of rates
    c = np.asarray(confusion, np.float64).copy()
    np.fill_diagonal(c, 0)
    return (c + c.T) / 2


def _unpaired_delta(dense_right, moe_right):  # the two accuracies' errors added as if on separate images
    n, p, q = dense_right.size, dense_right.mean(), moe_right.mean()
    return float(100 * (q - p)), float(100 * 1.96 * np.sqrt(p * (1 - p) / n + q * (1 - q) / n))


WRONG = {
    "backward_closure": SimpleNamespace(sigmoid=_sigmoid_wrong),
    "softmax_vjp": SimpleNamespace(softmax_vjp=lambda y, g: y * g),
    "topk_dispatch": SimpleNamespace(route=_route_renormalised),
    "superclass_loss": SimpleNamespace(superclass_loss=lambda z, labels, groups: float(
        -np.mean(np.log(np.exp(z) / np.exp(z).sum(1, keepdims=True))[np.arange(len(labels)), labels % z.shape[1]]))),
    "load_balance": SimpleNamespace(importance_loss=lambda p: float(
        np.mean(np.bincount(p.argmax(-1).ravel(), minlength=p.shape[-1]).std() ** 2))),  # counts of argmax choices
    "superclasses": SimpleNamespace(confusion_graph=_graph_counts),
    "paired_delta": SimpleNamespace(paired_delta=_unpaired_delta),
}


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_check_fails_on_a_plausible_wrong_answer(name):
    with pytest.raises(AssertionError):
        CHECKS[name](WRONG[name])


def test_check_command_exit_codes(capsys):
    assert check.main(["softmax_vjp"]) == 1
    assert check.main(["softmax_vjp", "--solution"]) == 0
    assert "PASS softmax_vjp" in capsys.readouterr().out
