"""The Module base class and the two containers (Sequential, ModuleList).

A module is a thin shell over the functional ops in :mod:`npmobilenet.ops`. Its ``forward(x)``
calls ``out, cache = op_forward(...)``, keeps the cache, and returns ``out``; its
``backward(dout)`` calls ``op_backward(dout, cache)``, *adds* the parameter gradients into each
``Parameter.grad`` (they accumulate until :meth:`Module.zero_grad`, as in PyTorch) and returns
``dx``. Only the last forward's cache is kept, so one backward follows one forward.

Attributes register themselves, as in PyTorch: assigning a :class:`Parameter` makes a parameter,
assigning a :class:`Module` makes a child, and :meth:`Module.register_buffer` makes a buffer
(state that is saved but not trained, such as batch norm's running statistics). Names join with
dots, so a state_dict key reads like the attribute path: ``depthwise_sep_conv6.0.dwconv.weight``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import NamedTuple

import numpy as np

from npmobilenet._checks import describe
from npmobilenet.nn.parameter import Parameter


class IncompatibleKeys(NamedTuple):
    """What ``load_state_dict(..., strict=False)`` returns, as in PyTorch."""

    missing_keys: list[str]
    unexpected_keys: list[str]


class Module:
    """Base class: parameters, buffers and children, registered by attribute assignment.

    Subclasses implement ``forward(x) -> out`` and ``backward(dout) -> dx``. ``__call__`` is
    ``forward``.
    """

    def __init__(self) -> None:
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "_cache", None)

    # ----------------------------------------------------------------- registration
    def __setattr__(self, name: str, value) -> None:
        if "_parameters" not in self.__dict__:
            raise AttributeError(
                f"{type(self).__name__}: call super().__init__() before assigning attributes"
            )
        is_buffer = name in self._buffers and isinstance(value, np.ndarray)
        for table in (self._parameters, self._buffers, self._modules):
            table.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        elif is_buffer:
            self._buffers[name] = value
        object.__setattr__(self, name, value)

    def register_buffer(self, name: str, array: np.ndarray) -> None:
        """Register saved, untrained state (e.g. running statistics) under ``name``."""
        if not isinstance(array, np.ndarray):
            raise TypeError(f"register_buffer: {name} must be a numpy array, got {describe(array)}")
        self.__setattr__(name, array)
        self._buffers[name] = array

    # ----------------------------------------------------------------- forward / backward
    def forward(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__} does not implement forward")

    def backward(self, dout: np.ndarray) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__} does not implement backward")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.forward(x)

    def output_shape(self, in_shape: tuple) -> tuple:
        """The output shape for an input of shape ``in_shape``, by arithmetic alone (no ops run).

        Layers override this; the default chains the children in registration order, which for
        every composite module in this package is the order its forward runs them.
        """
        if not self._modules:
            raise NotImplementedError(f"{type(self).__name__} does not implement output_shape")
        for child in self._modules.values():
            in_shape = child.output_shape(in_shape)
        return tuple(in_shape)

    def _take_cache(self, op: str):
        """The cache of the last forward; a clear error if there was none."""
        if self._cache is None:
            raise RuntimeError(f"{op}: backward called before forward (no cached activations)")
        return self._cache

    # ----------------------------------------------------------------- traversal
    def children(self) -> Iterator[Module]:
        yield from self._modules.values()

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        """Yield ``(dotted name, module)`` for this module (name ``prefix``) and all below it."""
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        """Yield ``(dotted name, Parameter)`` in registration order, depth first."""
        for mod_name, mod in self.named_modules(prefix):
            for name, p in mod._parameters.items():
                yield (f"{mod_name}.{name}" if mod_name else name), p

    def parameters(self) -> Iterator[Parameter]:
        for _, p in self.named_parameters():
            yield p

    def named_buffers(self, prefix: str = "") -> Iterator[tuple[str, np.ndarray]]:
        for mod_name, mod in self.named_modules(prefix):
            for name, b in mod._buffers.items():
                yield (f"{mod_name}.{name}" if mod_name else name), b

    # ----------------------------------------------------------------- modes and gradients
    def train(self, mode: bool = True) -> Module:
        """Set training mode here and in every child (batch statistics, active dropout)."""
        for _, mod in self.named_modules():
            object.__setattr__(mod, "training", bool(mode))
        return self

    def eval(self) -> Module:
        """Evaluation mode: running statistics, dropout off. Same as ``train(False)``."""
        return self.train(False)

    def zero_grad(self) -> None:
        """Fill every parameter's ``.grad`` with zeros (gradients accumulate until then)."""
        for p in self.parameters():
            p.zero_grad()

    # ----------------------------------------------------------------- state
    def state_dict(self) -> OrderedDict[str, np.ndarray]:
        """Parameters and buffers by dotted name, in PyTorch's order.

        Per module: its parameters, then its buffers, then each child's entries. The arrays are
        the model's own (no copies), as PyTorch's state_dict shares storage: copy them if you
        mean to keep a snapshot while training continues.
        """
        state = OrderedDict()
        for mod_name, mod in self.named_modules():
            dot = f"{mod_name}." if mod_name else ""
            for name, p in mod._parameters.items():
                state[dot + name] = p.data
            for name, b in mod._buffers.items():
                state[dot + name] = b
        return state

    def load_state_dict(self, state: Mapping[str, np.ndarray], strict: bool = True):
        """Copy arrays from ``state`` into this module's parameters and buffers, in place.

        Every problem is found first and reported in ONE ``ValueError`` (missing and unexpected
        keys when ``strict``; wrong shapes, non-array or non-numeric values always), and then
        nothing is changed: there is no partial load. A missing batch-norm
        ``num_batches_tracked`` loads as 0 (as in PyTorch). Values are cast to the model's dtype
        (float64 weights load into a float32 model, like ``torch.Tensor.copy_``); a float
        array cannot fill an integer buffer such as ``num_batches_tracked``.

        Returns ``IncompatibleKeys(missing_keys, unexpected_keys)`` (both empty when strict).
        """
        op = f"{type(self).__name__}.load_state_dict"
        if not isinstance(state, Mapping):
            raise TypeError(
                f"{op}: state must be a mapping of name -> array, got {describe(state)}"
            )
        own = self.state_dict()
        # A missing batch-norm counter loads as 0, as in PyTorch (files from other libraries)
        counters = [k for k in own if k not in state and k.endswith(".num_batches_tracked")]
        state = {**state, **{k: np.zeros((), np.int64) for k in counters}} if counters else state
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        problems = []
        if strict and missing:
            problems.append(f"missing keys: {missing}")
        if strict and unexpected:
            problems.append(f"unexpected keys: {unexpected}")
        sources = {}
        for key, dst in own.items():
            if key in state:
                src, problem = _check_source(key, state[key], dst)
                if problem:
                    problems.append(problem)
                sources[key] = src
        if problems:
            raise ValueError(
                f"{op}: {len(problems)} problem(s), nothing was loaded:\n  " + "\n  ".join(problems)
            )
        for key, src in sources.items():
            np.copyto(own[key], src, casting="unsafe")
        return IncompatibleKeys(missing if not strict else [], unexpected if not strict else [])

    # ----------------------------------------------------------------- display
    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        if not self._modules:
            return f"{type(self).__name__}({self.extra_repr()})"
        lines = [f"{type(self).__name__}("]
        for name, child in self._modules.items():
            body = repr(child).replace("\n", "\n  ")
            lines.append(f"  ({name}): {body}")
        return "\n".join(lines) + "\n)"


def _check_source(key: str, value, dst: np.ndarray):
    """Return ``(value as an array, problem text or None)`` for loading ``value`` into ``dst``."""
    if hasattr(value, "__array__") and not isinstance(value, np.ndarray):
        try:  # e.g. a CPU torch tensor
            value = np.asarray(value)
        except Exception as e:  # noqa: BLE001 - reported with the other problems
            return None, f"{key}: could not convert {type(value).__name__} to an array ({e})"
    if not isinstance(value, np.ndarray):
        return None, f"{key}: expected a numpy array, got {describe(value)}"
    if value.shape != dst.shape:
        return value, f"{key}: shape {value.shape} in the state, {dst.shape} in the model"
    if value.dtype.kind not in "fiu" or (dst.dtype.kind in "iu" and value.dtype.kind == "f"):
        return value, f"{key}: dtype {value.dtype} cannot be loaded into {dst.dtype}"
    return value, None


class ModuleList(Module):
    """A list of modules named ``"0"``, ``"1"``, ... with no forward of its own (as in PyTorch).

    The owner iterates it; it exists so that state_dict keys come out as ``blocks.3.conv.weight``.
    """

    def __init__(self, modules=()) -> None:
        super().__init__()
        for i, m in enumerate(modules):
            if not isinstance(m, Module):
                raise TypeError(
                    f"{type(self).__name__}: item {i} must be a Module, got {describe(m)}"
                )
            setattr(self, str(i), m)

    def __getitem__(self, i: int) -> Module:
        return list(self._modules.values())[i]

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())


class Sequential(ModuleList):
    """Children named ``"0"``, ``"1"``, ... run in order; backward runs them in reverse."""

    def __init__(self, *modules: Module) -> None:
        super().__init__(modules)

    def forward(self, x: np.ndarray) -> np.ndarray:
        for m in self._modules.values():
            x = m.forward(x)
        return x

    def backward(self, dout: np.ndarray) -> np.ndarray:
        """Each child's backward in reverse order: the chain rule through ``forward``'s loop."""
        for m in reversed(self._modules.values()):
            dout = m.backward(dout)
        return dout
