"""Outer optimizers: what turns a hypergradient into the next hyperparameter values.

Each optimizer is one module (``sign``: the authors' update) over the coordinates of
:mod:`hpo.outer.coordinates`; the divergence policies of :mod:`hpo.outer.divergence` run before it."""
