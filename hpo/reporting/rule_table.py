"""Plain-text description of an update rule's hyperparameters, read from its :class:`HyperSpec` s.

The CLI (``hpo optimizers``) prints it, so users see ranges and FDS defaults without the CLI
knowing anything about particular optimizers.
"""

from __future__ import annotations

from hpo.optimizers.base import UpdateRule


def describe_rule(rule: UpdateRule) -> str:
    """A header line and one row per hyperparameter: range, init, outer step, count, search range, hand-picked value."""
    backends = ("reverse-checkpointed, forward-manual, forward-jvp" if rule.hand_tangent
                else "reverse-checkpointed, forward-jvp")
    counterpart = type(rule).torch_optimizer is not UpdateRule.torch_optimizer
    curv = rule.curvature
    curvature = ("" if curv is None else
                 f"; curvature: Hutchinson diag(H) every {curv.every} step{'s' if curv.every > 1 else ''}, "
                 f"{curv.probes} probe{'s' if curv.probes > 1 else ''}")
    header = (f"{rule.name}  ({type(rule).__name__}; backends: {backends}; "
              f"torch.optim counterpart: {'yes' if counterpart else 'no'}{curvature})")
    lines = [header]
    rows = [("name", "valid range", "init", "step", "count", "search range", "hand-picked", "on divergence",
             "description")]
    moves = {-1: "lower", 0: "keep", 1: "raise"}
    for s in rule.hyperparameters:
        hand = "" if rule.hand_picked is None else f"{rule.hand_picked.get(s.name, float('nan')):g}"
        rng = s.search_range
        search = "-" if rng is None else f"{rng[0]:g}..{rng[1]:g}{' log' if rng[2] else ''}"
        rows.append((s.name, s.range_text(), f"{s.init:g}", f"{s.step:g}", str(s.count), search, hand,
                     moves.get(s.on_divergence, str(s.on_divergence)), s.description))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return "\n".join(lines)
