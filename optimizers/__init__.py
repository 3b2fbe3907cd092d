"""Optimizer update rules: pure functions over dicts of tensors, differentiable in their hyperparameters."""

from hpo.optimizers.adam import Adam, AdamW
from hpo.optimizers.base import Hyper, HyperSpec, Params, State, UpdateRule
from hpo.optimizers.sgd import SGDMomentum

__all__ = ["Adam", "AdamW", "Hyper", "HyperSpec", "Params", "SGDMomentum", "State", "UpdateRule"]
