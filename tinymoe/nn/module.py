"""Module, Parameter and ModuleList: how a model keeps track of its weights.

A Module is an object whose attributes may be Parameters (trainable tensors) and other Modules.
Assigning one registers it under the attribute's name, so a model written as plain Python

    class MLP(Module):
        def __init__(self, rng):
            super().__init__()
            self.fc1 = Linear(64, 256, rng=rng)
            self.fc2 = Linear(256, 64, rng=rng)

        def forward(self, x):
            return self.fc2(ops.gelu(self.fc1(x)))

knows its parameters by dotted names: "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias". Those names
are the keys of `state_dict()`, which is what checkpoints store, and of `load_state_dict()`.
Besides parameters, a module may hold *buffers* (`register_buffer`): arrays that are saved with the
model but not trained.
"""

from __future__ import annotations

from typing import Iterable, Iterator, NamedTuple

import numpy as np

from tinymoe.tensor import Tensor


class Parameter(Tensor):
    """A trainable tensor: requires_grad=True, and registered by the Module it is assigned to.

    The array is copied (so the parameter owns its memory) and stored as `dtype` if given, otherwise
    in the array's own floating-point dtype.
    """

    def __init__(self, data, dtype=None):
        array = np.array(data.data if isinstance(data, Tensor) else data, dtype=dtype, copy=True)
        if array.dtype.kind != "f":
            raise TypeError(
                f"Parameter: values must be floating-point, got dtype {array.dtype}; "
                "pass dtype=np.float32 (training) or np.float64 (gradient checks)"
            )
        super().__init__(array, requires_grad=True)

    def __repr__(self) -> str:
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype})"


class LoadResult(NamedTuple):
    """What `load_state_dict(..., strict=False)` skipped: names the model has that the dict lacked,
    and names the dict had that the model lacks. Both are empty after a strict load."""

    missing: list[str]
    unexpected: list[str]


class Module:
    """Base class of every layer and model: registers Parameters and sub-Modules assigned as attributes.

    Subclasses call `super().__init__()` first, assign their parameters and sub-modules, and define
    `forward`. Calling the module calls `forward`.
    """

    def __init__(self) -> None:
        # Assigned through object.__setattr__, because our own __setattr__ needs them to exist.
        object.__setattr__(self, "_parameters", {})  # name -> Parameter, in assignment order
        object.__setattr__(self, "_modules", {})  # name -> Module
        object.__setattr__(self, "_buffers", {})  # name -> ndarray (saved, not trained)
        object.__setattr__(self, "training", True)

    # ----------------------------------------------------------------------------------------------
    # Registration
    # ----------------------------------------------------------------------------------------------
    def __setattr__(self, name: str, value) -> None:
        if "_parameters" not in self.__dict__:
            raise RuntimeError(
                f"cannot assign attribute {name!r} before Module.__init__() ran; call super().__init__() "
                f"at the top of {type(self).__name__}.__init__"
            )
        if name in self._buffers and not isinstance(value, (Parameter, Module)) and value is not None:
            # Assigning to a buffer keeps it a buffer (so `self.counts = counts + 1` is still saved).
            value = np.asarray(value)
            self._buffers[name] = value
            object.__setattr__(self, name, value)
            return
        # Re-assigning a name replaces whatever was registered under it.
        for registry in (self._parameters, self._modules, self._buffers):
            registry.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        for registry in (self._parameters, self._modules, self._buffers):
            registry.pop(name, None)
        object.__delattr__(self, name)

    def register_buffer(self, name: str, value) -> None:
        """Attach an array that belongs in `state_dict()` but is not trained (no gradient, no optimizer)."""
        if "_parameters" not in self.__dict__:
            raise RuntimeError(
                f"register_buffer({name!r}) before Module.__init__() ran; call super().__init__() first"
            )
        for registry in (self._parameters, self._modules):
            registry.pop(name, None)
        array = np.asarray(value)
        self._buffers[name] = array
        object.__setattr__(self, name, array)

    # ----------------------------------------------------------------------------------------------
    # Walking the tree
    # ----------------------------------------------------------------------------------------------
    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        """(dotted name, module) for this module ("" for itself) and every module below it, depth first."""
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def children(self) -> Iterator[Module]:
        return iter(self._modules.values())

    def named_parameters(self) -> Iterator[tuple[str, Parameter]]:
        """(dotted name, parameter) for every parameter, each listed once even if shared by two layers."""
        seen: set[int] = set()
        for module_name, module in self.named_modules():
            for name, p in module._parameters.items():
                if id(p) not in seen:
                    seen.add(id(p))
                    yield (f"{module_name}.{name}" if module_name else name), p

    def parameters(self) -> list[Parameter]:
        return [p for _, p in self.named_parameters()]

    def named_buffers(self) -> Iterator[tuple[str, np.ndarray]]:
        for module_name, module in self.named_modules():
            for name in module._buffers:
                yield (f"{module_name}.{name}" if module_name else name), getattr(module, name)

    def num_parameters(self) -> int:
        """The number of trainable numbers (each shared parameter counted once)."""
        return sum(p.data.size for p in self.parameters())

    # ----------------------------------------------------------------------------------------------
    # Saving and loading
    # ----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        """Dotted name -> a copy of the array, for every parameter and buffer.

        Copies, so the dict is a snapshot: training on afterwards does not change a saved checkpoint.
        """
        state = {name: p.data.copy() for name, p in self.named_parameters()}
        state.update({name: np.array(b, copy=True) for name, b in self.named_buffers()})
        return state

    def load_state_dict(self, state: dict, strict: bool = True) -> LoadResult:
        """Copy the arrays of `state` into this module's parameters and buffers, in place.

        Values are cast to each parameter's dtype, so a float64 checkpoint loads into a float32 model.
        With strict=True (the default), every name must match exactly: missing and unexpected names
        raise a KeyError listing all of them. A shape mismatch always raises a ValueError naming the
        parameter, the model's shape and the checkpoint's shape. Nothing is modified if any check fails.
        """
        state = {name: np.asarray(v.data if isinstance(v, Tensor) else v) for name, v in state.items()}
        targets = {name: p.data for name, p in self.named_parameters()}  # name -> the model's array
        targets.update(self.named_buffers())

        missing = [name for name in targets if name not in state]
        unexpected = [name for name in state if name not in targets]
        if strict and (missing or unexpected):
            raise KeyError(
                f"load_state_dict: the state dict does not match {type(self).__name__}: "
                f"missing {len(missing)} name(s): {missing}; unexpected {len(unexpected)} name(s): {unexpected} "
                "(pass strict=False to load only the names both have)"
            )
        mismatched = [
            f"{name}: model has shape {current.shape}, state dict has shape {state[name].shape}"
            for name, current in targets.items()
            if name in state and state[name].shape != current.shape
        ]
        if mismatched:
            raise ValueError("load_state_dict: shape mismatch for " + "; ".join(mismatched))

        for name, current in targets.items():
            if name in state:
                current[...] = state[name]  # in place (cast to the model's dtype): the array objects are kept
        return LoadResult(missing, unexpected)

    # ----------------------------------------------------------------------------------------------
    # Modes, gradients, dtypes
    # ----------------------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> Module:
        """Set training mode (dropout and the like active) on this module and all below; returns self."""
        for _, module in self.named_modules():
            object.__setattr__(module, "training", bool(mode))
        return self

    def eval(self) -> Module:
        """Evaluation mode: `train(False)`. Does not turn off gradients; use `tinymoe.no_grad()` for that."""
        return self.train(False)

    def zero_grad(self) -> None:
        """Forget every parameter's gradient (set `.grad` to None), before the next backward pass."""
        for p in self.parameters():
            p.grad = None

    def to_dtype(self, dtype) -> Module:
        """Cast every parameter and floating-point buffer to `dtype`, in place; returns self.

        E.g. `block.to_dtype(np.float64)` before a whole-block gradient check. Gradients are dropped.
        The Parameter objects are kept (only their arrays change), so make the optimizer afterwards.
        """
        dtype = np.dtype(dtype)
        if dtype.kind != "f":
            raise TypeError(f"to_dtype: parameters must be floating-point, got {dtype}")
        for p in self.parameters():
            p.data = p.data.astype(dtype)
            p.grad = None
        for _, module in self.named_modules():
            for name in list(module._buffers):
                value = getattr(module, name)
                if value.dtype.kind == "f":
                    module.register_buffer(name, value.astype(dtype))
        return self

    # ----------------------------------------------------------------------------------------------
    # Calling and printing
    # ----------------------------------------------------------------------------------------------
    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def extra_repr(self) -> str:
        """One line of settings shown by repr(); layers override it (e.g. "in=64, out=256")."""
        return ""

    def __repr__(self) -> str:
        lines = [f"({name}): " + repr(child).replace("\n", "\n  ") for name, child in self._modules.items()]
        head = f"{type(self).__name__}({self.extra_repr()}"
        if not lines:
            return head + ")"
        return head + "\n  " + "\n  ".join(lines) + "\n)"


class ModuleList(Module):
    """A list of modules, registered under the names "0", "1", ... (so names read "blocks.3.attn.qkv")."""

    def __init__(self, modules: Iterable[Module] = ()):
        super().__init__()
        for module in modules:
            self.append(module)

    def append(self, module: Module) -> ModuleList:
        if not isinstance(module, Module):
            raise TypeError(f"ModuleList.append: expected a Module, got {type(module).__name__}")
        setattr(self, str(len(self._modules)), module)
        return self

    def extend(self, modules: Iterable[Module]) -> ModuleList:
        for module in modules:
            self.append(module)
        return self

    def __getitem__(self, index: int | slice) -> Module | list[Module]:
        modules = list(self._modules.values())  # a slice gives a plain list of the modules
        return modules[index]

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(list(self._modules.values()))

    def forward(self, *args, **kwargs):
        raise NotImplementedError("ModuleList is a container; iterate over it and call each module")
