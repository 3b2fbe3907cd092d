"""The structured best-response layers of Self-Tuning Networks (MacKay et al., ICLR 2019).

A linear or convolutional layer with weights :math:`W, b` gains a second path :math:`W_h, b_h` of
the same shape, scaled per output unit (per output channel) by gates computed linearly from the
(unconstrained, centred) hyperparameters :math:`z`:

.. math::

    y = W x + b + g(z) \\odot (W_h x + b_h), \\qquad g(z) = A z

This is the layer of weights :math:`\\hat w(z) = (W + \\mathrm{diag}(g) W_h,\\; b + g \\odot b_h)`:
the paper's :math:`\\hat w_\\phi(\\lambda) = W_{elem} + (V\\lambda) \\odot_{row} W_{hyper}`.  Each
example of a batch may carry its own :math:`z` (a ``(B, H)`` table), so one minibatch sees many
perturbed hyperparameter settings.  With :math:`g = 0` (``A`` starts at zero) the layer is the plain
one.

:func:`convert` returns a copy of a model with every ``nn.Linear``, ``nn.Conv1d`` and ``nn.Conv2d``
replaced by a :class:`BestResponse` layer; any other module that holds parameters (an LSTM, a
BatchNorm, an embedding) is refused with one line.  :func:`conditioned` sets the hyperparameters the
layers see for the duration of a block, so the user's own ``logits(model, batch)`` runs unchanged.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Mapping
from typing import final

import torch
from torch import Tensor, nn

from hpo.core.grouping import layer_of

#: The layers that have a structured best response.
CONVERTIBLE = (nn.Linear, nn.Conv1d, nn.Conv2d)


@final
class BestResponse(nn.Module):
    """``layer(x) + (A z) ⊙ hyper(x)``: a Linear or Conv layer made a function of the hyperparameters.

    ``hyper`` is a freshly initialised copy of ``layer`` (:math:`W_h, b_h`) and ``gate`` the
    linear map :math:`A` from ``hypers`` values to one gate per output unit, zero at the start.
    ``index`` is the layer's position among the model's layers (what a per-layer L2 value indexes).

    Example:
        >>> layer = BestResponse(nn.Linear(3, 2), hypers=4, index=0)
        >>> x = torch.randn(5, 3)
        >>> with conditioned(layer, torch.randn(5, 4)):
        ...     torch.equal(layer(x), layer.layer(x))
        True
    """

    def __init__(self, layer: nn.Module, hypers: int, index: int) -> None:
        super().__init__()
        if not isinstance(layer, CONVERTIBLE):
            raise TypeError(f"no best-response layer for {type(layer).__name__}")
        self.layer = layer
        self.hyper = copy.deepcopy(layer)
        self.hyper.reset_parameters()  # type: ignore[operator]
        units = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
        self.gate = nn.Linear(hypers, units, bias=False, dtype=layer.weight.dtype, device=layer.weight.device)
        nn.init.zeros_(self.gate.weight)
        self.index = index
        self.z: Tensor | None = None

    def gates(self, z: Tensor) -> Tensor:
        """:math:`g = A z`: ``(units,)`` for one setting ``z`` of shape ``(H,)``, ``(B, units)`` for ``(B, H)``."""
        return self.gate(z)

    def forward(self, x: Tensor) -> Tensor:
        """:math:`W x + b + g \\odot (W_h x + b_h)` with the gates of the conditioning ``z`` (none: the plain layer)."""
        out = self.layer(x)
        if self.z is None:
            return out  # type: ignore[no-any-return]
        return out + self.broadcast(self.gates(self.z), out) * self.hyper(x)  # type: ignore[no-any-return]

    def broadcast(self, g: Tensor, out: Tensor) -> Tensor:
        """Gates shaped to scale ``out``: the unit axis is the last of a Linear output, axis 1 of a Conv's."""
        if isinstance(self.layer, nn.Linear):
            return g.reshape(*g.shape[:-1], *([1] * (out.dim() - g.dim())), g.shape[-1])
        lead = g.shape[:-1] if g.dim() > 1 else (1,)
        return g.reshape(*lead, g.shape[-1], *([1] * (out.dim() - 2)))

    def square_norm(self, g: Tensor) -> Tensor:
        """:math:`\\lVert W + \\mathrm{diag}(g) W_h \\rVert^2 + \\lVert b + g \\odot b_h \\rVert^2`, per row of ``g``.

        Expanded per output unit :math:`o` as :math:`c_{0,o} + 2 g_o c_{1,o} + g_o^2 c_{2,o}` with
        :math:`c_0 = \\lVert W_o \\rVert^2 + b_o^2`, :math:`c_1 = \\langle W_o, W_{h,o} \\rangle + b_o b_{h,o}`,
        :math:`c_2 = \\lVert W_{h,o} \\rVert^2 + b_{h,o}^2`: the squared norm of the weights each example uses.
        """
        w, wh = self.layer.weight, self.hyper.weight
        if isinstance(self.layer, nn.Linear):
            rows, hrows = w, wh
        else:
            rows, hrows = w.flatten(1), wh.flatten(1)
        c0, c1, c2 = (rows * rows).sum(1), (rows * hrows).sum(1), (hrows * hrows).sum(1)
        b, bh = self.layer.bias, self.hyper.bias
        if b is not None and bh is not None:
            c0, c1, c2 = c0 + b * b, c1 + b * bh, c2 + bh * bh
        return (c0 + 2 * g * c1 + g * g * c2).sum(-1)


def best_response_layers(model: nn.Module) -> list[BestResponse]:
    """The :class:`BestResponse` layers of a converted model, in module order."""
    return [m for m in model.modules() if isinstance(m, BestResponse)]


def check_convertible(model: nn.Module) -> None:
    """``ValueError`` (one line) naming the first module that holds parameters but is not Linear/Conv1d/Conv2d."""
    for name, module in model.named_modules():
        if isinstance(module, CONVERTIBLE):
            continue
        if any(True for _ in module.parameters(recurse=False)):
            raise ValueError(f"module {name or '(root)'!r} is a {type(module).__name__}, which has no structured "
                             f"best-response layer (only {', '.join(c.__name__ for c in CONVERTIBLE)} and "
                             f"parameter-free modules can be converted)")


def convert(model: nn.Module, hypers: int, layers: Mapping[str, int]) -> nn.Module:
    """A copy of ``model`` with each Linear/Conv layer made a :class:`BestResponse` to ``hypers`` values.

    ``layers`` maps a layer's name (:func:`hpo.core.grouping.layer_of` of its parameters) to its
    index.  The extra weights :math:`W_h` are drawn from torch's global RNG (seed it for a
    reproducible model); ``ValueError`` as :func:`check_convertible`.
    """
    check_convertible(model)
    out = copy.deepcopy(model)
    if isinstance(out, CONVERTIBLE):  # the model is one layer
        return BestResponse(out, hypers, layers[layer_of("weight")])
    names = [name for name, m in out.named_modules() if isinstance(m, CONVERTIBLE)]
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = out.get_submodule(parent_name)
        layer = getattr(parent, child) if child else out
        index = layers[layer_of(f"{name}.weight")]
        setattr(parent, child, BestResponse(layer, hypers, index))
    return out


@contextlib.contextmanager
def conditioned(model: nn.Module, z: Tensor | None) -> Iterator[None]:
    """Within the block every best-response layer of ``model`` uses ``z`` (``(H,)`` or one row per example)."""
    layers = [model] if isinstance(model, BestResponse) else best_response_layers(model)
    for m in layers:
        m.z = z
    try:
        yield
    finally:
        for m in layers:
            m.z = None


def weight_penalty(model: nn.Module, rho: Tensor, z: Tensor) -> Tensor:
    """:math:`\\frac12 \\sum_l \\rho_l \\lVert \\hat w_l(z) \\rVert^2`, averaged over the rows of ``z``.

    ``rho`` is ``(L,)`` or ``(B, L)`` (one L2 value per layer, per example), ``z`` is ``(H,)`` or
    ``(B, H)``: each example's loss is penalised by the norm of the weights it was computed with.
    """
    total = torch.zeros((), dtype=z.dtype, device=z.device)
    for m in best_response_layers(model):
        per = 0.5 * rho[..., m.index] * m.square_norm(m.gates(z))
        total = total + per.mean()
    return total
