"""Optimizer update rules: pure functions over dicts of tensors, differentiable in their hyperparameters."""

from hpo.optimizers.adahessian import AdaHessian
from hpo.optimizers.adam import Adam, AdamW
from hpo.optimizers.base import Curvature, Hyper, HyperSpec, Params, State, UpdateRule
from hpo.optimizers.exadam import EXAdam
from hpo.optimizers.sgd import SGDMomentum
from hpo.optimizers.sophia import Sophia

__all__ = ["AdaHessian", "Adam", "AdamW", "Curvature", "EXAdam", "Hyper", "HyperSpec", "Params", "SGDMomentum",
           "Sophia", "State", "UpdateRule"]
