"""Hypergradient backends: implementations of :class:`hpo.core.backend.HypergradientBackend`."""

from hpo.backends.forward import ForwardJvpBackend, ForwardManualBackend

__all__ = ["ForwardJvpBackend", "ForwardManualBackend"]
