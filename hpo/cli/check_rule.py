"""``hpo check-rule SPEC``: check a rule's hypergradients on a tiny float64 problem (see :mod:`hpo.checking.check_rule`)."""

from __future__ import annotations

import click

from hpo.app.registry import BUILTIN_RULES, resolve_rule

HELP = f"""Check the update rule SPEC on a tiny float64 problem: one line per hyperparameter.

SPEC is a built-in rule ({', '.join(BUILTIN_RULES)}), module:attr or path/to/file.py:Class.  The tangent
derived with torch.func.jvp must equal reverse mode and central finite differences, and a
hand-derived tangent the derived one.  Exit status 0 when every check passes, 1 otherwise.
"""


@click.command("check-rule", help=HELP)
@click.argument("spec", metavar="SPEC")
@click.option("--horizon", type=click.IntRange(min=2), default=12, show_default=True,
              help="Inner steps of the tiny problem.")
@click.option("--rtol", type=click.FloatRange(min=0, min_open=True), default=1e-6, show_default=True,
              help="Largest relative error allowed against finite differences.")
def check_rule_command(spec: str, horizon: int, rtol: float) -> None:
    """Resolve SPEC, print :func:`hpo.checking.check_rule.check_rule`'s lines, exit 1 if a check fails."""
    from hpo.checking.check_rule import check_rule

    try:
        rule = resolve_rule(spec)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="SPEC") from None
    report = check_rule(rule, horizon=horizon, rtol=rtol)
    for line in report.lines():
        click.echo(line)
    if not report.ok:
        click.get_current_context().exit(1)
