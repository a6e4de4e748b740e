"""The Module base class and the two containers (Sequential, ModuleList).

A module is a thin shell over the functional ops in :mod:`npmobilenet.ops`. Its ``forward(x)``
calls ``out, cache = op_forward(...)``, keeps the cache, and returns ``out``; its
``backward(dout)`` calls ``op_backward(dout, cache)``, *adds* the parameter gradients into each
``Parameter.grad`` (they accumulate until :meth:`Module.zero_grad`, as in PyTorch) and returns
``dx``. Only the last forward's cache is kept, so one backward follows one forward.

Attributes register themselves, as in PyTorch: assigning a :class:`Parameter` makes a parameter,
assigning a :class:`Module` makes a child, and :meth:`Module.register_buffer` makes a buffer
(state that is saved but not trained, such as batch norm's running statistics). Replacing an
existing child or parameter keeps its place in the order. Names join with dots, so a state_dict
key reads like the attribute path: ``depthwise_sep_conv6.0.dwconv.weight``.

Dataflow is explicit. A plain ``forward(x)`` returns a fresh array and a plain ``backward(dout)``
leaves ``dout`` intact. The library's own modules accept two keyword arguments that a caller
who owns the arrays may pass:

* ``forward(x, workspace=ws)``: write outputs into (and split the batch with the runner of) a
  :class:`npmobilenet.nn.workspace.Workspace` the caller owns;
* ``backward(dout, consume=True)``: the caller will not read ``dout`` again, so the module may
  write over it (batch norm computes its dx in place).

A container (``Sequential``, ``MobileNetV1``) passes them on by one rule (:func:`run_forward`,
:func:`run_backward`): a child gets ``workspace=`` when its ``forward`` has a parameter of that
name, and ``consume=True`` when its ``backward`` has a ``consume`` parameter and the gradient is
the container's own (what a later child's backward returned, not an array the caller passed
in). A user's module with plain ``forward(x)`` / ``backward(dout)`` gets neither, so it may read
``x`` and ``dout`` as often as it likes (a skip connection does). Its backward must return a
gradient the caller may own (a new array, or its ``dout`` passed through). The same holds for a
``forward`` or ``backward`` set on an instance (``model.fc.forward = my_function``): the rule
reads the parameters of the function that runs.

Where a library module would be run by faster code than its own methods (a block fusing batch
norm with its activation, a convolution applying the batch norm before it as it reads, the
fused inference engine), the caller first checks :func:`is_exactly`: a subclass, or a module
with a method set on the instance, is called as it is.
"""

from __future__ import annotations

import functools
import inspect
import operator
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import NamedTuple

import numpy as np

from npmobilenet._checks import describe, flag
from npmobilenet.nn.parameter import Parameter, pack, packed_runs

SPENT = "spent"  # a module's cache after its backward used it (see Module._take_cache)


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
        if name == "_cache":  # what a forward keeps for its backward: never registered, and
            object.__setattr__(self, name, value)  # set twice per layer and step
            return
        if "_parameters" not in self.__dict__:
            raise AttributeError(
                f"{type(self).__name__}: call super().__init__() before assigning attributes"
            )
        _check_replacement(self, name, value)
        is_buffer = name in self._buffers and isinstance(value, np.ndarray)
        if isinstance(value, Parameter):
            table = self._parameters
        elif isinstance(value, Module):
            table = self._modules
        else:
            table = self._buffers if is_buffer else None
        for other in (self._parameters, self._buffers, self._modules):
            if other is not table and name in other:
                del other[name]
        if table is not None:
            table[name] = value  # an existing key keeps its place, as in PyTorch
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        """``del module.name`` unregisters a parameter, buffer or child too, as in PyTorch (a
        deleted block then leaves the forward, the state_dict and ``parameters()``)."""
        for table in (self._parameters, self._buffers, self._modules):
            table.pop(name, None)
        object.__delattr__(self, name)

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
        """The cache of the last forward; a clear error if there was none, or if a backward
        already used it (a backward sets ``self._cache = SPENT``)."""
        if self._cache is SPENT:
            raise RuntimeError(
                f"{op}: backward called twice after one forward (run forward again first), or"
                " the module ran twice in one forward: it keeps its last call's cache only, so"
                " a layer used at two places cannot be differentiated; give each place a layer"
                " of its own (copy.deepcopy)"
            )
        if self._cache is None:
            raise RuntimeError(f"{op}: backward called before forward (no cached activations)")
        return self._cache

    # ----------------------------------------------------------------- traversal
    def children(self) -> Iterator[Module]:
        """The direct children, in registration order, each once."""
        for _, child in self.named_children():
            yield child

    def named_children(self) -> Iterator[tuple[str, Module]]:
        """``(name, child)`` of the direct children, each once (under its first name)."""
        seen = set()
        for name, child in self._modules.items():
            if id(child) not in seen:
                seen.add(id(child))
                yield name, child

    def modules(self) -> Iterator[Module]:
        """This module and all below it, each once, in the order of :meth:`named_modules`."""
        for _, m in self.named_modules():
            yield m

    def get_submodule(self, target: str) -> Module:
        """The module at the dotted path ``target`` (``""``: this module), as in PyTorch."""
        if not isinstance(target, str):
            raise TypeError(f"{type(self).__name__}.get_submodule: target must be a str, got"
                            f" {describe(target)}")  # fmt: skip
        module = self
        for i, name in enumerate(target.split(".") if target else []):
            if name not in module._modules:
                where = ".".join(target.split(".")[:i]) or "the module"
                raise AttributeError(f"{type(self).__name__}.get_submodule: {where} ("
                                     f"{type(module).__name__}) has no child {name!r}")  # fmt: skip
            module = module._modules[name]
        return module

    def apply(self, fn) -> Module:
        """Call ``fn(module)`` on every child (recursively), then on this module; returns
        ``self`` (PyTorch's order)."""
        for child in self.children():
            child.apply(fn)
        fn(self)
        return self

    def named_modules(self, prefix: str = "", remove_duplicate: bool = True
                      ) -> Iterator[tuple[str, Module]]:  # fmt: skip
        """Yield ``(dotted name, module)`` for this module (name ``prefix``) and all below it.

        A module registered at several places (one layer used twice) is yielded once, under its
        first name, unless ``remove_duplicate`` is False (as in PyTorch)."""
        seen = set() if remove_duplicate else None
        yield from self._named_modules(prefix, seen)

    def _named_modules(self, prefix: str, seen) -> Iterator[tuple[str, Module]]:
        if seen is not None:
            if id(self) in seen:
                return
            seen.add(id(self))
        yield prefix, self
        for name, child in self._modules.items():
            yield from child._named_modules(f"{prefix}.{name}" if prefix else name, seen)

    def named_parameters(self, prefix: str = "", remove_duplicate: bool = True
                         ) -> Iterator[tuple[str, Parameter]]:  # fmt: skip
        """Yield ``(dotted name, Parameter)`` in registration order, depth first.

        A parameter reachable under several names (a shared layer) is yielded once, under its
        first name, unless ``remove_duplicate`` is False (as in PyTorch): an optimizer given
        ``parameters()`` then updates it once per step."""
        seen = set()
        for mod_name, mod in self.named_modules(prefix, remove_duplicate):
            for name, p in mod._parameters.items():
                if remove_duplicate and id(p) in seen:
                    continue
                seen.add(id(p))
                yield (f"{mod_name}.{name}" if mod_name else name), p

    def parameters(self) -> Iterator[Parameter]:
        """Yield every Parameter once, in the order of :meth:`named_parameters` (without
        names)."""
        yield from dict.fromkeys(p for mod in self._depth_first() for p in mod._parameters.values())

    def _depth_first(self) -> list[Module]:
        """This module and all below it, each once, in the order of :meth:`named_modules`: one
        list built with a stack (named_modules' nested generators and dotted names cost about
        0.5 us a module, and zero_grad walks every module each step)."""
        order, seen, todo = [], set(), [self]
        while todo:
            mod = todo.pop()
            if id(mod) not in seen:  # by identity: a user's module may define __eq__
                seen.add(id(mod))
                order.append(mod)
                todo.extend(reversed(mod._modules.values()))
        return order

    def named_buffers(self, prefix: str = "") -> Iterator[tuple[str, np.ndarray]]:
        for mod_name, mod in self.named_modules(prefix):
            for name, b in mod._buffers.items():
                yield (f"{mod_name}.{name}" if mod_name else name), b

    # ----------------------------------------------------------------- modes and gradients
    def train(self, mode: bool = True) -> Module:
        """Set training mode here and in every child (batch statistics, active dropout)."""
        mode = flag(f"{type(self).__name__}.train", "mode", mode)
        for _, mod in self.named_modules():
            object.__setattr__(mod, "training", mode)
        return self

    def eval(self) -> Module:
        """Evaluation mode: running statistics, dropout off. Same as ``train(False)``."""
        return self.train(False)

    def requires_grad_(self, requires_grad: bool = True) -> Module:
        """Set ``requires_grad`` on every parameter here and below; returns ``self``.

        A parameter with ``requires_grad=False`` is frozen: backward does no work for its
        gradient and leaves its ``.grad`` as it is, and the optimizers skip it.
        """
        requires_grad = flag(f"{type(self).__name__}.requires_grad_", "requires_grad",
                             requires_grad)  # fmt: skip
        for p in self.parameters():
            p.requires_grad = requires_grad
        return self

    def freeze(self, prefix: str = "") -> list[str]:
        """Freeze the parameters whose dotted name is ``prefix`` or starts with ``prefix.``
        (every parameter for ``""``); returns their names.

        ``model.freeze("first_conv")`` freezes the stem; ``model.freeze()`` then
        ``model.fc.requires_grad_(True)`` trains only the classifier. A prefix that names no
        parameter is an error (a typo would otherwise freeze nothing).
        """
        return self._set_requires_grad("freeze", prefix, False)

    def unfreeze(self, prefix: str = "") -> list[str]:
        """The reverse of :meth:`freeze`: train the parameters under ``prefix`` again."""
        return self._set_requires_grad("unfreeze", prefix, True)

    def _set_requires_grad(self, op: str, prefix, value: bool) -> list[str]:
        op = f"{type(self).__name__}.{op}"
        if not isinstance(prefix, str):
            raise TypeError(f"{op}: prefix must be a str, got {describe(prefix)}")
        params = dict(self.named_parameters(remove_duplicate=False))  # a shared one by any name
        names = [n for n in params if not prefix or n == prefix or n.startswith(prefix + ".")]
        if not names:
            top = sorted({n.split(".")[0] for n in params})
            raise ValueError(f"{op}: no parameter is named {prefix!r} or below it; top-level"
                             f" names: {top[:12]}")  # fmt: skip
        for n in names:
            params[n].requires_grad = value
        return names

    def zero_grad(self) -> None:
        """Fill every parameter's ``.grad`` with zeros (gradients accumulate until then)."""
        for run, _, grad in packed_runs(self.parameters()):
            if grad is None:
                run[0].zero_grad()
            else:  # parameters side by side in one buffer (pack_parameters)
                grad.fill(0)

    def pack_parameters(self) -> None:
        """Move every parameter's ``data`` into one contiguous buffer (per dtype) and every
        ``grad`` into another, in the order of :meth:`parameters`, values unchanged
        (:func:`npmobilenet.nn.parameter.pack`).

        Each ``Parameter`` then holds views of the buffers, so :meth:`zero_grad` and the
        optimizers treat the parameters as one array each (one call per operation, not one per
        parameter: the step of a small model is mostly such calls). A parameter assigned later
        (a replaced child, an added layer) has arrays of its own and is handled on its own, as
        is one whose ``data`` or ``grad`` is replaced; call this again to pack them too (it
        gives every parameter new arrays: views taken of the old ones, e.g. an earlier
        :meth:`state_dict`, no longer follow the parameters).
        """
        pack(self.parameters())

    # ----------------------------------------------------------------- state
    def state_dict(self) -> OrderedDict[str, np.ndarray]:
        """Parameters and buffers by dotted name, in PyTorch's order.

        Per module: its parameters, then its buffers, then each child's entries. The arrays are
        the model's own (no copies), as PyTorch's state_dict shares storage: copy them if you
        mean to keep a snapshot while training continues.
        """
        state = OrderedDict()
        for mod_name, mod in self.named_modules(remove_duplicate=False):  # every name, as torch
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


def _check_replacement(module: Module, name: str, value) -> None:
    """Raise TypeError where assigning ``value`` to ``name`` would silently unregister a
    parameter, child or buffer (as PyTorch does): a plain array assigned to a weight would leave
    the state_dict, ``parameters()`` and so the optimizer without it. A Parameter, a Module or
    None may replace anything (None unregisters it); a buffer takes any array."""
    if value is None or isinstance(value, (Parameter, Module)):
        return
    if name in module._parameters:
        kind, expected = "parameter", "a Parameter or None; Parameter(array) wraps an array"
    elif name in module._modules:
        kind, expected = "child module", "a Module or None"
    elif name in module._buffers and not isinstance(value, np.ndarray):
        kind, expected = "buffer", "a numpy array or None"
    else:
        return
    raise TypeError(f"{type(module).__name__}: cannot assign {describe(value)} as {kind}"
                    f" {name!r} (expected {expected})")  # fmt: skip


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

    def __getitem__(self, i):
        """The module at position ``i``, or for a slice a container of the same type holding
        those modules (as PyTorch: a ModuleList numbers them from 0, a Sequential keeps their
        names)."""
        items = list(self._modules.items())
        if isinstance(i, slice):
            out = ModuleList.__new__(type(self))
            Module.__init__(out)
            renumber = type(self).forward is Module.forward  # a list, not a Sequential
            for k, (name, m) in enumerate(items[i]):
                setattr(out, str(k) if renumber else name, m)
            return out
        return items[self._position("__getitem__", i)][1]

    def __setitem__(self, i: int, module: Module) -> None:
        """Replace the module at position ``i`` (its name and place kept)."""
        name = list(self._modules)[self._position("__setitem__", i)]
        setattr(self, name, self._checked("__setitem__", module))

    def __delitem__(self, i) -> None:
        """Remove the module(s) at position or slice ``i``; the rest are numbered 0, 1, ...
        again, as in PyTorch."""
        items = list(self._modules.values())
        if isinstance(i, slice):
            del items[i]
        else:
            del items[self._position("__delitem__", i)]
        self._renumber(items)

    def insert(self, index: int, module: Module) -> None:
        """Insert ``module`` before position ``index`` (``list.insert``); renumbers."""
        items = list(self._modules.values())
        items.insert(operator.index(index), self._checked("insert", module))
        self._renumber(items)

    def append(self, module: Module):
        """Add ``module`` at the end; returns ``self``."""
        setattr(self, str(len(self)), self._checked("append", module))
        return self

    def extend(self, modules):
        """Append each of ``modules``; returns ``self``."""
        for m in list(modules):
            self.append(m)
        return self

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())

    def _position(self, op: str, i) -> int:
        """``i`` as a position in ``range(len(self))`` (negative counts from the end)."""
        op = f"{type(self).__name__}.{op}"
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"{op}: index must be an int or a slice, got {describe(i)}")
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"{op}: index {int(i)} is out of range for {n} module(s)")
        return int(i) % n

    def _checked(self, op: str, module) -> Module:
        if not isinstance(module, Module):
            raise TypeError(f"{type(self).__name__}.{op}: expected a Module, got"
                            f" {describe(module)}")  # fmt: skip
        return module

    def _renumber(self, modules: list) -> None:
        """Hold exactly ``modules``, named "0", "1", ... in order."""
        for name in list(self._modules):
            delattr(self, name)
        for k, m in enumerate(modules):
            setattr(self, str(k), m)


class Sequential(ModuleList):
    """Children named ``"0"``, ``"1"``, ... run in order; backward runs them in reverse."""

    def __init__(self, *modules: Module) -> None:
        super().__init__(modules)

    def forward(self, x: np.ndarray, *, workspace=None) -> np.ndarray:
        """Each child's forward in order (``workspace`` passed on by :func:`run_forward`)."""
        for m in self._modules.values():
            x = run_forward(m, x, workspace)
        return x

    def backward(self, dout: np.ndarray, *, consume: bool = False) -> np.ndarray:
        """Each child's backward in reverse order: the chain rule through ``forward``'s loop.

        ``consume=True``: the caller will not read ``dout`` again (see :func:`run_backward`)."""
        return backward_chain(reversed(self._modules.values()), dout, consume)


# the methods a user may set on an instance, which callers must then call as they are
USER_METHODS = ("forward", "backward")


def is_exactly(module, *classes) -> bool:
    """Whether ``module``'s type is one of ``classes`` (not a subclass) and it has no
    ``forward`` or ``backward`` set on the instance: then calling it runs that class's code, and
    a caller may run an equivalent of it instead (fused ops, the fused engine)."""
    return type(module) in classes and not any(m in vars(module) for m in USER_METHODS)


def _takes(module, method: str, name: str) -> bool:
    """Whether the function ``module.<method>`` calls (one set on the instance, else the
    class's) has a parameter ``name`` (by name, not ``**kwargs``). A class's methods are looked
    at once; a function set on an instance every time (a cache would keep it, and what it
    holds, alive)."""
    own = vars(module).get(method)
    if own is None:
        return _accepts(getattr(type(module), method), name)
    return _accepts.__wrapped__(own, name)


@functools.cache
def _accepts(method, name: str) -> bool:
    """Whether the function ``method`` has a parameter ``name`` (by name, not ``**kwargs``)."""
    try:
        param = inspect.signature(method).parameters.get(name)
    except (TypeError, ValueError):
        return False
    return param is not None and param.kind in (param.KEYWORD_ONLY, param.POSITIONAL_OR_KEYWORD)


def run_forward(module: Module, x, workspace=None):
    """``module.forward(x)``, with ``workspace=`` when given and the forward takes one."""
    if workspace is not None and _takes(module, "forward", "workspace"):
        return module.forward(x, workspace=workspace)
    return module.forward(x)


def run_backward(module: Module, dout, consume: bool = False, input_grad: bool = True):
    """``module.backward(dout)``, with ``consume=True`` when asked and the backward takes it.

    ``input_grad=False``: the caller does not need dx; it is passed on to a backward that takes
    ``input_grad`` (which then skips dx), and None is returned either way."""
    kw = {"consume": True} if consume and _takes(module, "backward", "consume") else {}
    if not input_grad and _takes(module, "backward", "input_grad"):
        kw["input_grad"] = False
    dx = module.backward(dout, **kw)
    return dx if input_grad else None


def backward_chain(modules, dout, consume: bool = False):
    """Run ``modules``' backwards in the given order, each on the gradient the previous one
    returned. The first gets ``consume`` as given; the later ones get ``consume=True`` (the
    chain owns the gradients its modules return) unless the gradient shares memory with the
    ``dout`` the caller passed, which a pass-through module (a reshape) returns a view of."""
    given = dout
    for i, m in enumerate(modules):
        own = consume or (i > 0 and not np.may_share_memory(dout, given))
        dout = run_backward(m, dout, own)
    return dout
