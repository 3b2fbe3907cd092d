"""Checking hypergradients: the reference reverse-mode unroll and finite differences, a tiny problem to
run them on, and the ``hpo check-rule`` report of a user's update rule."""
