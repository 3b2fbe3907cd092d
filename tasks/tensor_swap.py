"""Call a function of a module with other tensors in its parameter and buffer slots: a cheaper ``functional_call``.

:func:`torch.func.functional_call` resolves every dotted name, looks for tied weights and swaps
through generic accessors on each call: about a fifth of a plain training step of a small MLP
(0.17 ms of 0.77 ms, ``docs/performance.md``).  :class:`TensorSwap` resolves the slots once, when
it is built, so that

.. math::

    \\mathrm{call}(fn, \\theta, b, x) = fn(\\text{module with } \\theta \\text{ and } b \\text{ in its slots},\\ x)

costs one dictionary store per slot before ``fn`` and one after it (what ``functional_call`` does
at the bottom).  Tied weights (one tensor under several names) are filled from the name
:meth:`torch.nn.Module.named_parameters` keeps, as ``functional_call(..., tie_weights=True)`` does.
Inside ``torch.compile`` the call goes through ``functional_call``, which Dynamo traces.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, final

import torch
from torch import Tensor, nn
from torch.func import functional_call


@final
class LossModule(nn.Module):
    """``forward(fn, batch, *rest) = fn(self.model, batch, *rest)``: the wrapper ``functional_call`` swaps weights into."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, fn: Callable[..., Tensor], batch: Any, *rest: Any) -> Tensor:
        """The user's function on the wrapped model."""
        return fn(self.model, batch, *rest)


@final
class TensorSwap:
    """The parameter and buffer slots of ``module``, resolved once; :meth:`call` swaps tensors into them.

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(2, 1, bias=False)
        >>> swap = TensorSwap(net)
        >>> float(swap.call(lambda m, x: m(x).sum(), {"weight": torch.ones(1, 2)}, {}, torch.ones(1, 2)))
        2.0
        >>> net.weight is net._parameters["weight"] and net.weight.requires_grad  # its own weight is back
        True
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.wrapper = LossModule(module)
        first: dict[int, str] = {}  # id of a tensor -> its first name, the one named_parameters() keeps
        self.slots: list[tuple[dict[str, Any], str, str]] = []  # (a submodule's _parameters or _buffers, attribute, key)
        for kind, pairs in (("_parameters", module.named_parameters(remove_duplicate=False)),
                            ("_buffers", module.named_buffers(remove_duplicate=False))):
            for name, tensor in pairs:
                prefix, _, attr = name.rpartition(".")
                key = first.setdefault(id(tensor), name)
                self.slots.append((getattr(module.get_submodule(prefix), kind), attr, key))

    def call(self, fn: Callable[..., Any], params: Mapping[str, Tensor], buffers: Mapping[str, Tensor],
             *args: Any) -> Any:
        """``fn(module, *args)`` with ``params[key]`` or ``buffers[key]`` in each slot (the module's own where absent).

        The module's own tensors are back in their slots afterwards, also when ``fn`` raises.
        """
        if torch.compiler.is_compiling():
            named = {"model." + k: v for k, v in (*params.items(), *buffers.items())}
            return functional_call(self.wrapper, named, (fn, *args))
        saved = []
        try:
            for slot, attr, key in self.slots:
                value = params.get(key, buffers.get(key))
                if value is not None:
                    saved.append((slot, attr, slot[attr]))
                    slot[attr] = value
            return fn(self.module, *args)
        finally:
            for slot, attr, own in reversed(saved):
                slot[attr] = own
