"""Optimizers (SGD with momentum, AdamW) and the warmup + cosine learning-rate schedule.

An optimizer holds a list of parameters and, per parameter, whatever running state its rule needs
(a momentum buffer, Adam's two moment estimates). `step()` reads each parameter's `.grad` and updates
`.data` in place, in the parameter's own dtype (float32 stays float32). Parameters whose `.grad` is
None (they took no part in this step's loss, e.g. an expert no image was routed to) are skipped
entirely: no weight decay, no change to their state.

    opt = AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    for step in range(total_steps):
        opt.lr = warmup_cosine_lr(step, total_steps, warmup_steps, base_lr=1e-3)
        model.zero_grad()
        loss = ...; loss.backward()
        opt.step()

Parameter groups: pass a list of dicts instead of a list of parameters to give some parameters their
own weight decay, e.g. none for biases and norms:
`AdamW([{"params": matrices}, {"params": vectors, "weight_decay": 0.0}], lr=1e-3, weight_decay=0.05)`.
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np

from tinymoe.tensor import Tensor


class Optimizer:
    """Shared bookkeeping: parameter groups, `lr`, `zero_grad`, gradient checks, state dicts.

    Subclasses define `_update(param, grad, state, weight_decay)` for one parameter, and
    `_hyperparameters()`, the numbers saved by `state_dict()`.
    """

    _state_keys: tuple[str, ...] = ()  # names of the per-parameter arrays, e.g. ("exp_avg", "exp_avg_sq")

    def __init__(self, params, lr: float, weight_decay: float):
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        if self.lr < 0:
            raise ValueError(f"{type(self).__name__}: lr must be >= 0, got {lr}")
        if self.weight_decay < 0:
            raise ValueError(f"{type(self).__name__}: weight_decay must be >= 0, got {weight_decay}")
        # Every parameter once, in order, with its group's weight decay (None: the optimizer's).
        self.params: list[Tensor] = []
        self._group_decay: list[float | None] = []
        for group in self._groups(params):
            decay = group.get("weight_decay")
            unknown = set(group) - {"params", "weight_decay"}
            if unknown:
                raise ValueError(
                    f"{type(self).__name__}: parameter groups may set only 'params' and 'weight_decay', "
                    f"got {sorted(unknown)}"
                )
            for p in group["params"]:
                self._add_param(p, None if decay is None else float(decay))
        if not self.params:
            raise ValueError(f"{type(self).__name__}: got an empty list of parameters")
        self.state: list[dict] = [{} for _ in self.params]  # per parameter: "step" and its arrays

    def _groups(self, params) -> list[dict]:
        if isinstance(params, Tensor):
            raise TypeError(
                f"{type(self).__name__}: pass a list of parameters (e.g. model.parameters()), not one tensor"
            )
        params = list(params)
        if params and all(isinstance(g, dict) for g in params):
            return params
        return [{"params": params}]

    def _add_param(self, p, decay: float | None) -> None:
        name = type(self).__name__
        if not isinstance(p, Tensor):
            raise TypeError(f"{name}: parameters must be Tensors (Parameters), got {type(p).__name__}")
        if not p.requires_grad:
            raise ValueError(
                f"{name}: got a tensor of shape {p.shape} that does not require grad; it would never change"
            )
        if any(p is q for q in self.params):
            raise ValueError(f"{name}: a parameter of shape {p.shape} is listed twice")
        self.params.append(p)
        self._group_decay.append(decay)

    def zero_grad(self) -> None:
        """Set every parameter's `.grad` to None (the next backward starts from nothing)."""
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        """Update every parameter that has a gradient, in place."""
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            if p.grad.shape != p.data.shape:
                raise ValueError(
                    f"{type(self).__name__}.step: parameter {i} has shape {p.data.shape} but its grad has shape "
                    f"{p.grad.shape}; a gradient must have its parameter's shape"
                )
            grad = p.grad.astype(p.data.dtype, copy=False)
            decay = self.weight_decay if self._group_decay[i] is None else self._group_decay[i]
            state = self.state[i]
            state["step"] = state.get("step", 0) + 1
            self._update(p.data, grad, state, decay)

    def _update(self, param: np.ndarray, grad: np.ndarray, state: dict, weight_decay: float) -> None:
        raise NotImplementedError

    def _hyperparameters(self) -> dict[str, float]:
        raise NotImplementedError

    # ----------------------------------------------------------------------------------------------
    # Checkpoints
    # ----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """A flat dict of numbers and arrays: the hyperparameters, then per parameter i its step count
        ("param.i.step") and arrays ("param.i.exp_avg", ...). Numbers fit in JSON, arrays in an .npz.
        Arrays are copies."""
        out: dict = {"kind": type(self).__name__, **self._hyperparameters()}
        for i, state in enumerate(self.state):
            if "step" not in state:
                continue  # never updated: nothing to save
            out[f"param.{i}.step"] = int(state["step"])
            for key in self._state_keys:
                if key in state:
                    out[f"param.{i}.{key}"] = state[key].copy()
        return out

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore hyperparameters and per-parameter state saved by `state_dict()` of the same kind of
        optimizer over parameters of the same shapes, in the same order."""
        name = type(self).__name__
        if state_dict.get("kind") != name:
            kind = state_dict.get("kind")
            raise ValueError(f"{name}.load_state_dict: the state dict is from a {kind!r} optimizer")
        hyper = self._hyperparameters()
        missing = [k for k in hyper if k not in state_dict]
        if missing:
            raise KeyError(f"{name}.load_state_dict: missing hyperparameters {missing}")
        new_state: list[dict] = [{} for _ in self.params]
        for key, value in state_dict.items():
            if key == "kind" or key in hyper:
                continue
            parts = key.split(".")
            well_formed = len(parts) == 3 and parts[0] == "param" and parts[1].isdigit()
            if not well_formed or parts[2] not in ("step",) + self._state_keys:
                raise KeyError(f"{name}.load_state_dict: unexpected key {key!r}")
            i = int(parts[1])
            if i >= len(self.params):
                raise ValueError(
                    f"{name}.load_state_dict: state for parameter {i}, but this optimizer has "
                    f"{len(self.params)} parameters"
                )
            if parts[2] == "step":
                new_state[i]["step"] = int(value)
                continue
            value = np.asarray(value)
            if value.shape != self.params[i].data.shape:
                raise ValueError(
                    f"{name}.load_state_dict: {key} has shape {value.shape} but parameter {i} has shape "
                    f"{self.params[i].data.shape}"
                )
            new_state[i][parts[2]] = value.astype(self.params[i].data.dtype, copy=True)
        for i, state in enumerate(new_state):
            if state and "step" not in state:
                raise KeyError(f"{name}.load_state_dict: arrays for parameter {i} but no param.{i}.step")
        for key in hyper:
            setattr(self, key, state_dict[key])
        self.state = new_state


class SGD(Optimizer):
    """Stochastic gradient descent with momentum and (coupled, L2) weight decay, as torch.optim.SGD:

        d = grad + weight_decay * p          # L2 penalty (weight_decay/2)|p|^2 added to the loss
        buf = momentum * buf + d             # buf starts at d on the first step (0 * buf + d)
        p = p - lr * buf                     # without momentum: p = p - lr * d
    """

    _state_keys = ("momentum_buffer",)

    def __init__(self, params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0):
        super().__init__(params, lr, weight_decay)
        self.momentum = float(momentum)
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"SGD: momentum must be in [0, 1), got {momentum}")

    def _hyperparameters(self) -> dict[str, float]:
        return {"lr": self.lr, "momentum": self.momentum, "weight_decay": self.weight_decay}

    def _update(self, param, grad, state, weight_decay):
        d = grad + weight_decay * param if weight_decay else grad
        if self.momentum:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = d.copy()
            else:
                buf *= self.momentum
                buf += d
            d = buf
        param -= self.lr * d


class AdamW(Optimizer):
    """Adam with decoupled weight decay (Loshchilov & Hutter, 2019), as torch.optim.AdamW. Per step t:

        p = p - lr * weight_decay * p                  # decay the weights directly, not via the gradient
        m = beta1 * m + (1 - beta1) * grad             # running mean of the gradient
        v = beta2 * v + (1 - beta2) * grad^2           # running mean of its square
        m_hat = m / (1 - beta1^t)                      # bias correction: m and v start at 0, so early
        v_hat = v / (1 - beta2^t)                      #   averages are too small by exactly these factors
        p = p - lr * m_hat / (sqrt(v_hat) + eps)

    "Decoupled": the decay does not pass through m and v, so every weight shrinks by the same factor
    (1 - lr * weight_decay) whatever its gradient history; with Adam's L2 version, weights with large
    gradients would barely be regularised.
    """

    _state_keys = ("exp_avg", "exp_avg_sq")

    def __init__(self, params, lr: float, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.01):
        super().__init__(params, lr, weight_decay)
        beta1, beta2 = (float(b) for b in betas)
        if not (0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0):
            raise ValueError(f"AdamW: betas must be in [0, 1), got {betas}")
        if not eps > 0:
            raise ValueError(f"AdamW: eps must be > 0, got {eps}")
        self.beta1, self.beta2, self.eps = beta1, beta2, float(eps)

    def _hyperparameters(self) -> dict[str, float]:
        return {
            "lr": self.lr,
            "beta1": self.beta1,
            "beta2": self.beta2,
            "eps": self.eps,
            "weight_decay": self.weight_decay,
        }

    def _update(self, param, grad, state, weight_decay):
        t = state["step"]
        if "exp_avg" not in state:
            state["exp_avg"] = np.zeros_like(param)
            state["exp_avg_sq"] = np.zeros_like(param)
        m, v = state["exp_avg"], state["exp_avg_sq"]
        if weight_decay:
            param *= 1.0 - self.lr * weight_decay
        # All in place and with Python-float coefficients, so float32 state and parameters stay float32.
        m *= self.beta1
        m += (1.0 - self.beta1) * grad
        v *= self.beta2
        v += (1.0 - self.beta2) * grad * grad
        bias1 = 1.0 - self.beta1**t
        bias2 = 1.0 - self.beta2**t
        # lr * m_hat / (sqrt(v_hat) + eps), with m_hat = m / bias1 and v_hat = v / bias2.
        param -= (self.lr / bias1) * m / (np.sqrt(v / bias2) + self.eps)


def warmup_cosine_lr(step: int, total_steps: int, warmup_steps: int, base_lr: float, min_lr: float = 0.0) -> float:
    """The learning rate for `step` (counted from 0): a linear warmup, then a cosine decay to `min_lr`.

        step < warmup_steps:   base_lr * (step + 1) / warmup_steps       (reaches base_lr at its last step)
        otherwise:             min_lr + (base_lr - min_lr) * (1 + cos(pi * progress)) / 2,
                               progress = (step - warmup_steps) / (total_steps - warmup_steps), capped at 1

    So the rate is base_lr right after warmup, (base_lr + min_lr) / 2 halfway through the decay, and
    min_lr from total_steps on. The warmup starts at base_lr / warmup_steps rather than 0, so the first
    step is not wasted.
    """
    if total_steps < 1:
        raise ValueError(f"warmup_cosine_lr: total_steps must be >= 1, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(
            f"warmup_cosine_lr: warmup_steps must be in [0, total_steps={total_steps}], got {warmup_steps}"
        )
    if step < 0:
        raise ValueError(f"warmup_cosine_lr: step must be >= 0, got {step}")
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    decay_steps = total_steps - warmup_steps
    progress = min((step - warmup_steps) / decay_steps, 1.0) if decay_steps else 1.0
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
