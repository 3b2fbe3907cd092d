"""Check a rule's hypergradients on a tiny float64 problem: the ``gradcheck`` of update rules.

For every hyperparameter type ``name`` of the rule, with :math:`h = dL_{val}(\\theta_T)/d\\lambda_{name}`
over the shared values of :func:`hpo.checking.tiny.tiny_schedule`:

* ``forward-jvp`` (tangents derived with ``torch.func.jvp``) equals reverse mode through the whole
  unrolled run, :math:`\\|h_{jvp} - h_{rev}\\| \\le 10^{-9} \\|h_{rev}\\|`;
* it equals fourth-order central differences of the validation loss,
  :math:`h_j \\approx [8(L(x_j + \\epsilon) - L(x_j - \\epsilon)) - (L(x_j + 2\\epsilon) - L(x_j - 2\\epsilon))]
  / (12\\epsilon)`, to ``rtol``;
* a hand-derived tangent (``hand_tangent = True``, the ``forward-manual`` backend) equals ``forward-jvp``
  to ``1e-9``;
* for a rule with ``curvature`` (Sophia, AdaHessian), the same three comparisons hold with the
  Hutchinson estimate inside the differentiated step, and ``reverse-checkpointed`` (the VJP of
  every step, with replay from checkpoints) equals the reference unroll to ``1e-9`` as well;
* a hypergradient that is exactly zero where finite differences are not means a cut tangent
  (``float(hyper["lr"])``, ``.item()``, ``.detach()``); one that is exactly zero by every method
  means the value has no effect (``sign()`` or ``round()`` of it, or it is unused).

Every exception raised by the rule becomes a ``FAIL`` line, never a traceback.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar, final

import torch
from torch import Tensor

from hpo.backends.forward import ForwardJvpBackend, ForwardManualBackend
from hpo.backends.reverse_checkpointed import ReverseCheckpointedBackend
from hpo.checking.tiny import tiny_problem, tiny_schedule
from hpo.checking.unroll import reverse_hypergradient, unrolled_validation_loss
from hpo.core.backend import run_inner
from hpo.core.problem import InnerProblem
from hpo.core.schedule import Schedule
from hpo.core.step import hyper_at_step, loss_gradient, train_step, validation_loss
from hpo.optimizers.base import HyperSpec, UpdateRule

T = TypeVar("T")


#: Largest relative difference allowed between two derived hypergradients (jvp, reverse, hand).
DERIVED_RTOL = 1e-9


#: Finite-difference step as a fraction of the distance from the value to its range's nearer bound.
FD_STEP = 1e-3


#: Checkpoint interval of the reverse-checkpointed run that a curvature rule is also checked with
#: (small, so the tiny run's sweep replays several segments).
CHECKPOINT_EVERY = 3


#: Scale of the finite-difference steps of the one refinement, for the types whose first differences disagree.
FD_REFINE = 0.05


#: Words in an exception's text that say the rule read a tensor's value in Python.
READS_VALUE = ("item", "data-dependent", "data pointer", "numpy", "scalar", "storage")


@final
@dataclass(frozen=True)
class HyperCheck:
    """The outcome for one hyperparameter type: ``ok``, a one-line ``message`` and the relative errors.

    ``reverse_err``, ``fd_err`` and ``hand_err`` are ``||a - b|| / ||b||`` over the type's values for
    forward-jvp against reverse mode, against finite differences, and the hand tangent against
    forward-jvp; None where that comparison did not run.
    """

    name: str
    ok: bool
    message: str
    reverse_err: float | None = None
    fd_err: float | None = None
    hand_err: float | None = None


@final
@dataclass(frozen=True)
class RuleReport:
    """What :func:`check_rule` found: one :class:`HyperCheck` per hyperparameter type.

    When the rule cannot run at all (``init`` or ``step`` raises, the tiny run diverges) there is a
    single check, named ``init`` or ``step``, that says why.
    """

    rule: str
    checks: tuple[HyperCheck, ...]

    @property
    def ok(self) -> bool:
        """Whether every check passed."""
        return all(c.ok for c in self.checks)

    def lines(self) -> list[str]:
        """One line per check: name, ``ok`` or ``FAIL``, then the figures or the likely cause."""
        width = max([8, *(len(c.name) for c in self.checks)]) + 2
        return [f"{c.name:<{width}}{'ok' if c.ok else 'FAIL':<6}{c.message}" for c in self.checks]

    def __str__(self) -> str:
        return "\n".join(self.lines())


def check_rule(rule: UpdateRule | type[UpdateRule], *, horizon: int = 12, seed: int = 1, rtol: float = 1e-6,
               schedule: Schedule | None = None) -> RuleReport:
    """Check ``rule``'s derived (and hand-derived) hypergradients on :func:`hpo.checking.tiny.tiny_problem`.

    ``schedule`` defaults to :func:`hpo.checking.tiny.tiny_schedule`; ``rtol`` bounds the relative error
    against finite differences.  A rule class is instantiated without arguments.

    Example:
        >>> from hpo.optimizers import SGDMomentum
        >>> report = check_rule(SGDMomentum(), horizon=6)
        >>> report.ok, [c.name for c in report.checks]
        (True, ['lr', 'momentum', 'wd'])
    """
    if isinstance(rule, type):
        rule = rule()
    if not rule.hyperparameters:
        return RuleReport(rule.name, (HyperCheck("rule", False, "declares no hyperparameters (set hyperparameters = "
                                                 "(HyperSpec(...), ...))"),))
    problem = tiny_problem(rule, horizon=horizon, seed=seed)
    schedule = tiny_schedule(rule, horizon) if schedule is None else schedule
    schedule.check(rule)
    values = {k: v.to(torch.float64) for k, v in schedule.values.items()}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loss = _plain_run(problem, values)
        if isinstance(loss, HyperCheck):
            return RuleReport(rule.name, (loss,))
        jvp = _attempt(lambda: run_inner(ForwardJvpBackend(), problem, schedule).hypergrad)
        rev = _attempt(lambda: reverse_hypergradient(problem, values))
        hand = _attempt(lambda: run_inner(ForwardManualBackend(), problem, schedule).hypergrad) if rule.hand_tangent else None
        ckpt = (_attempt(lambda: run_inner(ReverseCheckpointedBackend(every=CHECKPOINT_EVERY), problem, schedule).hypergrad)
                if rule.curvature is not None else None)
        differences = _attempt(lambda: _finite_differences(problem, values, {s.name: s for s in rule.hyperparameters}))
    if isinstance(differences, Exception):
        return RuleReport(rule.name, tuple(HyperCheck(s.name, False, f"finite differences raise {_describe(differences)}: "
                                                      "rule.step fails near the checked values")
                                           for s in rule.hyperparameters))
    fd, steps = differences
    if isinstance(jvp, dict):  # refine once where the differences disagree: a sharp but smooth rule (EXAdam's
        # m^2 / (m^2 + eps)) needs a smaller step; a cut tangent still disagrees after it
        coarse = [s.name for s in rule.hyperparameters if rel_err(jvp[s.name], fd[s.name]) > rtol]
        if coarse:
            finer = _attempt(lambda: _finite_differences(problem, values, {s.name: s for s in rule.hyperparameters},
                                                         FD_REFINE, coarse))
            if not isinstance(finer, Exception):
                fd, steps = {**fd, **finer[0]}, {**steps, **finer[1]}
    scalar = any("to a scalar" in str(w.message) for w in caught)
    return RuleReport(rule.name, tuple(
        _judge(s.name, jvp, rev, hand, fd[s.name], _noise(loss, steps[s.name]), rtol, scalar, ckpt)
        for s in rule.hyperparameters))


def _attempt(fn: Callable[[], T]) -> T | Exception:
    """``fn()``, or the exception it raised."""
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - any failure of the user's rule is reported, not raised
        return e


def _describe(e: BaseException) -> str:
    """``Type: first line of the message`` (at most 160 characters)."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    text = text if len(text) <= 160 else text[:157] + "..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _hint(e: BaseException) -> str:
    """The likely cause of an exception raised while differentiating the rule, or ``""``."""
    text = str(e).lower()
    if any(w in text for w in READS_VALUE):
        return (": the rule reads a tensor's value in Python (float(), .item(), .numpy(), an if on a tensor), "
                "which cuts its tangent; keep hyperparameters as tensors")
    if "in-place" in text or "inplace" in text:
        return ": rule.step must work out of place (no add_(), mul_() or item assignment into a tensor)"
    return ""


def _plain_run(problem: InnerProblem, values: dict[str, Tensor]) -> HyperCheck | float:
    """The validation loss of the plain run (no derivatives), or a FAIL check if it raises or diverges."""
    rule = problem.rule
    try:
        state = rule.init(problem.params)
    except Exception as e:  # noqa: BLE001
        return HyperCheck("init", False, f"rule.init raises {_describe(e)}")
    params, buffers = problem.params, problem.buffers
    with torch.no_grad():
        for t, batch in problem.batches():
            if rule.curvature is not None:  # the estimate needs the loss: one call, reported as the rule's
                try:
                    out = train_step(rule, problem.loss_fn, params, buffers, state,
                                     hyper_at_step(values, t, problem.horizon), t, batch, seed=problem.seed)
                except Exception as e:  # noqa: BLE001
                    return HyperCheck("step", False, f"rule.step raises {_describe(e)} (inner step {t})")
                params, state, buffers = out.params, out.opt_state, out.buffers
                continue
            hyper = hyper_at_step(values, t, problem.horizon)
            try:
                g, _, buffers = loss_gradient(problem.loss_fn, params, buffers, batch, hyper)
            except Exception as e:  # noqa: BLE001 - only a bad step output can break the tiny model's loss
                return HyperCheck("step", False, f"the weights rule.step returns cannot be used: {_describe(e)} "
                                                 f"(inner step {t})")
            try:
                params, state = rule.step(params, state, g, hyper, t)
            except Exception as e:  # noqa: BLE001
                return HyperCheck("step", False, f"rule.step raises {_describe(e)} (inner step {t})")
        try:
            loss = float(validation_loss(problem.eval_fn, params, buffers, problem.val))
        except Exception as e:  # noqa: BLE001
            return HyperCheck("step", False, f"the weights rule.step returns cannot be used: {_describe(e)}")
    if not math.isfinite(loss):
        return HyperCheck("step", False, f"the tiny run diverges (validation loss {loss}) at {values_text(values)}")
    return loss


def values_text(values: dict[str, Tensor]) -> str:
    """``lr=[0.1, 0.2] momentum=[0.5]``: a schedule in one line."""
    return " ".join(f"{k}=[{', '.join(f'{x:g}' for x in v.tolist())}]" for k, v in values.items())


def fd_step(spec: HyperSpec, x: float) -> float:
    """Finite-difference step for value ``x``: ``FD_STEP`` times its distance to the nearer range bound.

    So ``x +- 2 eps`` stays inside the range; a type unbounded on both sides uses ``max(|x|, step)``.
    """
    dist = min(x - spec.lower, spec.upper - x)
    if not math.isfinite(dist):
        dist = max(abs(x), spec.step)
    return FD_STEP * dist


def _finite_differences(problem: InnerProblem, values: dict[str, Tensor], specs: dict[str, HyperSpec],
                        scale: float = 1.0, names: list[str] | None = None) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Fourth-order central differences of the validation loss, one value at a time, and their steps.

    ``scale`` multiplies every step (:func:`fd_step`); ``names`` limits the types (default: all).
    """
    def loss_at(name: str, j: int, delta: float) -> float:
        moved = {k: v.clone() for k, v in values.items()}
        moved[name][j] += delta
        return float(unrolled_validation_loss(problem, moved))

    grads, steps = {}, {}
    with torch.no_grad():
        for name, v in values.items():
            if names is not None and name not in names:
                continue
            eps = torch.tensor([scale * fd_step(specs[name], x) for x in v.tolist()], dtype=torch.float64)
            g = torch.zeros_like(v)
            for j, e in enumerate(eps.tolist()):
                near = loss_at(name, j, e) - loss_at(name, j, -e)
                far = loss_at(name, j, 2 * e) - loss_at(name, j, -2 * e)
                g[j] = (8 * near - far) / (12 * e)
            grads[name], steps[name] = g, eps
    return grads, steps


def _noise(loss: float, steps: Tensor) -> Tensor:
    """Rounding noise of the finite differences: a generous bound on ``|fd|`` when the true value is 0."""
    return 64 * torch.finfo(torch.float64).eps * max(abs(loss), 1.0) / steps


def rel_err(a: Tensor, b: Tensor) -> float:
    """``||a - b|| / ||b||``; 0 when both are zero, inf when only ``b`` is."""
    den = float(b.norm())
    num = float((a - b).norm())
    return num / den if den > 0 else (0.0 if num == 0 else math.inf)


def _judge(name: str, jvp: dict[str, Tensor] | Exception, rev: dict[str, Tensor] | Exception,
           hand: dict[str, Tensor] | Exception | None, fd: Tensor, noise: Tensor, rtol: float,
           scalar: bool, ckpt: dict[str, Tensor] | Exception | None = None) -> HyperCheck:
    """The first check that fails for type ``name``, or the figures of all of them."""
    def fail(message: str, **errs: float) -> HyperCheck:
        return HyperCheck(name, False, message, **errs)

    if isinstance(jvp, Exception):
        return fail(f"forward-jvp raises {_describe(jvp)}{_hint(jvp)}")
    derived = jvp[name]
    if not bool(torch.isfinite(derived).all()):
        return fail(f"derived hypergradient is not finite ({derived.tolist()}): the rule is not differentiable at "
                    "these values (sqrt or abs at 0, a division by 0 in the tangent)")
    if not bool(torch.isfinite(fd).all()):
        return fail(f"finite differences are not finite ({fd.tolist()}): the tiny run diverges near these values")
    cut = (derived == 0) & (fd.abs() > noise)
    if bool(cut.any()):
        j = int(cut.nonzero()[0])
        how = (f'float(hyper["{name}"]) or .item(): PyTorch warned of a tensor turned into a Python number' if scalar
               else f'float(hyper["{name}"]), .item(), .detach() or sign() of a hyperparameter')
        return fail(f"derived tangent is exactly zero but finite differences give {float(fd[j]):.3g}: the rule cuts "
                    f"the tangent of {name} ({how})")
    exact = rev[name] if isinstance(rev, dict) else torch.zeros_like(derived)
    if bool(((derived == 0) & (exact == 0)).any()):
        j = int(((derived == 0) & (exact == 0)).nonzero()[0])
        return fail(f"hypergradient is exactly zero by every method (value {j}): {name} has no effect on the "
                    f"validation loss: it is unused, or used only through sign(), round() or a comparison")
    if isinstance(rev, Exception):
        return fail(f"reverse mode raises {_describe(rev)}{_hint(rev)}")
    rev_err = rel_err(derived, rev[name])
    if rev_err > DERIVED_RTOL:
        return fail(f"jvp vs reverse {rev_err:.1e} > {DERIVED_RTOL:g}: forward and reverse mode differ (an in-place "
                    "update, state kept on self, or a custom autograd.Function)", reverse_err=rev_err)
    fd_err = rel_err(derived, fd)
    if fd_err > rtol:
        return fail(f"jvp vs finite differences {fd_err:.1e} > {rtol:g} (reverse agrees): the rule cuts part of the "
                    f"tangent of {name} (float(), .item(), .detach() or sign() of a hyperparameter) or is not "
                    "differentiable at these values", reverse_err=rev_err, fd_err=fd_err)
    figures = f"jvp vs reverse {rev_err:.1e}, vs finite differences {fd_err:.1e}"
    if isinstance(ckpt, Exception):
        return fail(f"reverse-checkpointed raises {_describe(ckpt)}{_hint(ckpt)}", reverse_err=rev_err, fd_err=fd_err)
    if ckpt is not None:  # a curvature rule: the replayed sweep must draw the same probes
        ckpt_err = rel_err(ckpt[name], rev[name])
        if ckpt_err > DERIVED_RTOL:
            return fail(f"reverse-checkpointed vs reverse {ckpt_err:.1e} > {DERIVED_RTOL:g}: the replay differs from "
                        "the forward pass (curvature probes not drawn from (seed, t)?)", reverse_err=rev_err,
                        fd_err=fd_err)
        figures += f", checkpointed vs reverse {ckpt_err:.1e}"
    if hand is None:
        return HyperCheck(name, True, figures, rev_err, fd_err)
    if isinstance(hand, Exception):
        return fail(f"hand tangent raises {_describe(hand)} (set hand_tangent = False to use forward-jvp only)",
                    reverse_err=rev_err, fd_err=fd_err)
    hand_err = rel_err(hand[name], derived)
    if hand_err > DERIVED_RTOL:
        return fail(f"hand tangent vs jvp {hand_err:.1e} > {DERIVED_RTOL:g}: rule.tangent is wrong (its terms in "
                    f"d_hyper[\"{name}\"] or a term feeding them); {figures}", reverse_err=rev_err, fd_err=fd_err,
                    hand_err=hand_err)
    return HyperCheck(name, True, f"{figures}, hand tangent vs jvp {hand_err:.1e}", rev_err, fd_err, hand_err)
