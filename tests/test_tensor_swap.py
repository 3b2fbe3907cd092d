"""TensorSwap: the same values and gradients as torch.func.functional_call, tied weights, the module left intact."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad

from hpo.tasks.tensor_swap import TensorSwap


class Tied(nn.Module):
    """An embedding whose weight is also the output layer's (two names, one tensor), with BatchNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(5, 3)
        self.norm = nn.BatchNorm1d(3)
        self.out = nn.Linear(3, 5, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.norm(self.emb(x)))


def loss(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x).pow(2).mean()


def test_values_gradients_and_buffers_match_functional_call() -> None:
    torch.manual_seed(0)
    net = Tied().double()
    params = {k: torch.randn_like(v) for k, v in net.named_parameters()}
    assert sorted(params) == ["emb.weight", "norm.bias", "norm.weight"]  # the tied name is not a key
    x = torch.tensor([0, 1, 2, 3, 4, 1])
    own = {k: v.clone() for k, v in net.state_dict().items()}
    swap = TensorSwap(net)
    bufs_a = {k: v.clone() for k, v in net.named_buffers()}
    bufs_b = {k: v.clone() for k, v in net.named_buffers()}
    got = swap.call(loss, params, bufs_a, x)
    want = functional_call(net, ({**params, **bufs_b},), (x,), tie_weights=True).pow(2).mean()
    assert torch.equal(got, want)
    assert torch.equal(bufs_a["norm.running_mean"], bufs_b["norm.running_mean"])  # updated on the copies
    assert not torch.equal(bufs_a["norm.running_mean"], own["norm.running_mean"])
    fresh = lambda: {k: v.clone() for k, v in net.named_buffers()}
    g_swap = grad(lambda p: swap.call(loss, p, fresh(), x))(params)
    g_fc = grad(lambda p: functional_call(net, ({**p, **fresh()},), (x,), tie_weights=True).pow(2).mean())(params)
    for k in params:
        torch.testing.assert_close(g_swap[k], g_fc[k], rtol=0, atol=1e-15)
    for k, v in net.state_dict().items():  # the module's own tensors are back, untouched
        assert torch.equal(v, own[k]), k
    assert net.out.weight is net.emb.weight and isinstance(net.emb.weight, nn.Parameter)


def test_own_tensors_are_restored_when_the_function_raises() -> None:
    net = nn.Linear(2, 2)
    weight = net.weight

    def boom(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        assert model.weight is not weight
        raise RuntimeError("inside")

    with pytest.raises(RuntimeError, match="inside"):
        TensorSwap(net).call(boom, {"weight": torch.zeros(2, 2)}, {}, torch.ones(2))
    assert net.weight is weight and net._parameters["weight"] is weight


def test_absent_keys_keep_the_modules_own_tensors() -> None:
    net = nn.Linear(2, 1)
    with torch.no_grad():
        net.bias.fill_(3.0)
    out = TensorSwap(net).call(lambda m, x: m(x), {"weight": torch.zeros(1, 2)}, {}, torch.ones(1, 2))
    assert float(out.detach()) == 3.0
