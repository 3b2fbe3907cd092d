"""Optimizer update rules: pure functions over dicts of tensors, differentiable in their hyperparameters."""

from optimizers.adam import Adam, AdamW
from optimizers.base import Hyper, HyperSpec, Params, State, UpdateRule
from optimizers.sgd import SGDMomentum

__all__ = ["Adam", "AdamW", "Hyper", "HyperSpec", "Params", "SGDMomentum", "State", "UpdateRule"]
