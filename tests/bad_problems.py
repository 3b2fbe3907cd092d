"""Problems defined wrongly, each refused in one line by ``hpo run`` (tests/test_problem.py)."""

import torch
from torch import nn
from torch.utils.data import TensorDataset

from hpo import Problem

g = torch.Generator().manual_seed(0)
x = torch.randn(64, 8, generator=g)
y = torch.randn(64, generator=g)

def vector_loss(model, batch):
    xb, yb = batch
    return (model(xb).squeeze(-1) - yb) ** 2          # not a scalar

def item_loss(model, batch):
    xb, yb = batch
    w = model[0].weight
    return ((model(xb).squeeze(-1) - yb) ** 2).mean() * float(w.sum())   # cuts the hypergradient

def make(loss, **kw):
    return lambda **_: Problem("bad", make_model=lambda: nn.Sequential(nn.Linear(8, 1)), loss=loss,
                               train=TensorDataset(x[:48], y[:48]), test=TensorDataset(x[48:], y[48:]), batch_size=8, **kw)

vector = make(vector_loss)
cut = make(item_loss)
big = lambda **_: Problem("bad", make_model=lambda: nn.Sequential(nn.Linear(8, 1)), loss=lambda m, b: ((m(b[0]).squeeze(-1) - b[1]) ** 2).mean(),
                          train=TensorDataset(x[:4], y[:4]), test=TensorDataset(x[48:], y[48:]), batch_size=32)
