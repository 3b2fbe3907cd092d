"""RMSprop written outside the library: ``hpo run --optimizer docs/examples/rmsprop_rule.py:RMSprop``."""
import torch

from hpo.optimizers import HyperSpec, UpdateRule


class RMSprop(UpdateRule):
    """``v <- a v + (1 - a) g^2``, ``theta <- theta - lr g / (sqrt(v + 1e-30) + 1e-8)`` (torch.optim.RMSprop)."""

    name = "rmsprop"
    hyperparameters = (HyperSpec("lr", init=0.0, step=1e-3, count=4),  # lr >= 0; 4 shared values
                       HyperSpec("alpha", high=1.0, high_open=True, init=0.9, step=0.05, on_divergence=0))
    hand_picked = {"lr": 1e-3, "alpha": 0.99}  # noqa: RUF012 - the constant baseline `hpo run` compares with

    def init(self, params):
        return {"v": {k: torch.zeros_like(p) for k, p in params.items()}}

    def step(self, params, state, grads, hyper, t):
        lr, a = hyper["lr"], hyper["alpha"]
        v = {k: a * state["v"][k] + (1 - a) * grads[k] ** 2 for k in params}
        return {k: params[k] - lr * grads[k] / ((v[k] + 1e-30).sqrt() + 1e-8) for k in params}, {"v": v}

    def torch_optimizer(self, params, hyper):  # optional: then the final retrain runs torch.optim.RMSprop
        return torch.optim.RMSprop(params, eps=1e-8, **self.torch_group(hyper))
