"""``auto``: choose forward mode or checkpointed reverse mode from a cost model.

Costs are in plain training steps per inner step; memory in bytes, with ``b`` bytes per value,
:math:`N` shared values, :math:`P` weights, :math:`T` inner steps and a memory budget :math:`M`
(``memory_budget``, default half the free memory):

.. math::

    \\text{forward:}\\quad c_{fwd} = 1 + c_f N \\ \\text{(CPU)}, \\qquad
    c_{fwd} = 1 + c_{hvp} \\lceil N / W \\rceil \\ \\text{(CUDA)}, \\qquad m_{fwd} = 2 N P b

    \\text{reverse-checkpointed:}\\quad c_{rev} = C_{tape} \\ \\text{(the whole run taped)}, \\quad
    c_{rev} = C_{pass} + C_{tape} \\ \\text{(taped segments)}, \\quad
    c_{rev} = C_{pass} (1 + r(k)) + C_{vjp} \\ \\text{(otherwise)}

with ``k`` and the regime the budget allows (:func:`hpo.backends.memory_budget.plan_checkpoints`):
the whole run taped by the forward pass when :math:`2 P b + T G \\le M` (nothing recomputed: each
step is built once, with its graph, and the sweep is one backward); else taped segments of
:math:`\\sqrt T` steps when :math:`2 \\lceil T/k \\rceil P b + k G \\le M` (``G``
one step's double-backward graph, estimated from one probe step); else ``k = 1``, every state
stored, when :math:`2 T P b \\le M`; else the smallest ``k`` whose
:math:`2 (\\lceil T/k \\rceil + k - 1) P b` fit, at most :math:`\\sqrt T`.
:math:`r(k) = (T - \\lceil T/k \\rceil) / T` is the fraction of steps recomputed (0 for ``k = 1``,
about 1 for :math:`\\sqrt T`).  :math:`C_{pass}` is the forward pass (a plain step that also stores
a checkpoint), :math:`C_{vjp}` one vector-Jacobian product of a step on its own,
:math:`C_{tape}` one step of a taped segment (the same products, one backward per segment).

(``2 P``: the weights and one optimizer-state tensor per weight, as for SGD-momentum; forward
mode's ``N`` columns are taken all started, the steady state of the last segment, an upper bound
of the run's average.)  Whatever fits in ``free_bytes`` and costs less wins; when both fit and
cost the same, forward mode (its memory does not grow with the horizon); when neither fits, the
smaller.  Activations (one step's graph) are left out of both memory figures.

Measured constants, CPU (2-core VM, torch 2.14.1, float32, one thread), from::

    python benchmarks/step_cost.py --model mlp --input mnist1d --batch-size 128 \\
        --counts 7,1,1 --counts 7,7,7 --counts 100,1,1 \\
        --methods sgd,forward-manual,reverse-truncated,reverse-checkpointed --windows 10,50 \\
        --compile inductor --steps 30 --warmup 3 --checkpoint-horizon 400 \\
        --horizons 100,1000,10000 --full-reverse-max 1000 --threads 1
    python benchmarks/step_cost.py --model lenet --input mnist --batch-size 128 \\
        --counts 7,1,1 --counts 7,7,7 --counts 100,1,1 \\
        --methods sgd,forward-manual,reverse-truncated,reverse-checkpointed --windows 10 \\
        --compile inductor --steps 5 --warmup 2 --checkpoint-horizon 100 --horizons '' --threads 1

* forward-manual, eager: MLP 15.4x / 32.6x / 121.6x a plain step at 9 / 21 / 102 started columns
  (:math:`c_f` = 1.6, 1.5, 1.2; an earlier run of the same command: 12.8x / 27.6x / 111.6x, i.e.
  1.3, 1.3, 1.1); LeNet 13.4x / 55.4x / 399.3x (:math:`c_f` = 1.4, 2.6, 3.9).  :math:`c_f = 1.3`
  is the cheapest figure at 9 columns, so the model leans towards forward mode.
* reverse-checkpointed, eager (``torch.autograd`` steps, taped segments; CPU clock,
  ``docs/performance.md``): forward pass 0.9-1.5x (:math:`C_{pass} = 1.1`); sweep of taped
  segments 2.5-3.1x (:math:`C_{tape} = 2.7`); sweep with every state stored 2.5-3.5x
  (:math:`C_{vjp} = 3.0`); a recomputation adds one more pass.  Whole run: MLP, CNN and LeNet
  3.5x-4.1x taped, 3.6x-5.1x with every state stored, whatever N.  The whole run taped (forward
  pass and sweep together, no separate pass): MLP 2.7-2.8x, CNN 2.5-3.1x, LeNet 2.8-3.1x, i.e.
  about :math:`C_{tape}`, which is what it is costed at.

So on a CPU forward mode wins only for :math:`N \\le 2`.  CUDA (assumption, not measured here:
no GPU was available): a vmap over up to :math:`W = 32` columns runs in the idle width of the
device for about the time of one Hessian-vector product, :math:`c_{hvp} = 2.5` plain steps (the
design notes' 2.0-2.6x a gradient); :math:`C_{pass} = 1`, :math:`C_{tape} = C_{vjp} = 2.5` (one
vector-Hessian product per step).  Re-measure on the GPU with the commands above (``--device cuda``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import final

from hpo.backends.memory_budget import OVER_BUDGET, CheckpointPlan, format_bytes, plan_checkpoints, recomputed_steps
from hpo.checks import integer
from hpo.errors import ConfigError

#: CPU: plain steps per started forward-mode column (MLP, eager; measured 1.1 to 1.6, LeNet 1.4 to 3.9).
CPU_COST_PER_COLUMN = 1.3
#: CPU: reverse-checkpointed's forward pass (a plain step storing checkpoints), in plain steps.
CPU_PASS_COST = 1.1
#: CPU: one vector-Jacobian product of a step on its own (torch.autograd double backward), in plain steps.
CPU_VJP_COST = 3.0
#: CPU: one step of a taped segment in the sweep, in plain steps.
CPU_TAPE_COST = 2.7
#: CUDA (assumed): columns that vmap runs side by side for the price of one.
CUDA_FREE_COLUMNS = 32
#: CUDA (assumed): one batched Hessian-vector product, in plain steps.
CUDA_HVP_COST = 2.5
#: CUDA (assumed): reverse-checkpointed's forward pass, in plain steps.
CUDA_PASS_COST = 1.0
#: CUDA (assumed): one vector-Jacobian product of a step, in plain steps (the design's 2-2.6x a gradient).
CUDA_VJP_COST = 2.5
#: CUDA (assumed): one step of a taped segment, in plain steps.
CUDA_TAPE_COST = 2.5
#: Tensors of size P per state: the weights and one optimizer-state tensor (SGD-momentum).
TENSORS_PER_STATE = 2


@final
@dataclass(frozen=True)
class BackendChoice:
    """The chosen backend's registered name and one line saying why."""

    name: str
    reason: str


def forward_cost(n_values: int, device_type: str) -> float:
    """Plain steps per inner step of forward mode with ``n_values`` started columns."""
    if device_type == "cuda":
        return 1.0 + CUDA_HVP_COST * math.ceil(n_values / CUDA_FREE_COLUMNS)
    return 1.0 + CPU_COST_PER_COLUMN * n_values


def reverse_cost(device_type: str, horizon: int = 1, every: int = 1, taped: bool = False,
                 whole_run: bool = False) -> float:
    """Plain steps per inner step of reverse-checkpointed: :math:`C_{tape}` with the whole run taped,
    :math:`C_{pass} + C_{tape}` with taped segments, else :math:`C_{pass} (1 + r(k)) + C_{vjp}`."""
    cuda = device_type == "cuda"
    if whole_run:
        return CUDA_TAPE_COST if cuda else CPU_TAPE_COST
    c_pass = CUDA_PASS_COST if cuda else CPU_PASS_COST
    if taped:
        return c_pass + (CUDA_TAPE_COST if cuda else CPU_TAPE_COST)
    c_vjp = CUDA_VJP_COST if cuda else CPU_VJP_COST
    return c_pass * (1.0 + recomputed_steps(horizon, every) / horizon) + c_vjp


def forward_bytes(n_values: int, n_params: int, dtype_bytes: int = 4) -> int:
    """Tangent memory of forward mode: :math:`2 N P b`."""
    return TENSORS_PER_STATE * n_values * n_params * dtype_bytes


def reverse_plan(n_params: int, horizon: int, budget: int | None, dtype_bytes: int = 4,
                 tape_bytes: int | None = None) -> CheckpointPlan:
    """The checkpoint plan under ``budget`` bytes, a state being :math:`2 P b` bytes (``tape_bytes``: ``G``)."""
    return plan_checkpoints(horizon, TENSORS_PER_STATE * n_params * dtype_bytes, budget, tape_bytes)


def reverse_bytes(n_params: int, horizon: int, dtype_bytes: int = 4, budget: int | None = 0) -> int:
    """Checkpoint memory of reverse-checkpointed: :math:`2 (\\lceil T/k \\rceil + k - 1) P b`.

    ``k`` as the budget allows; the default ``budget=0`` gives the least memory, :math:`k = \\sqrt T`.
    """
    return reverse_plan(n_params, horizon, budget, dtype_bytes).bytes


def _mib(n: int) -> str:
    return format_bytes(n)


def choose_backend(n_values: int, n_params: int, device_type: str, free_bytes: int | None, horizon: int,
                   has_hand_tangent: bool = True, dtype_bytes: int = 4, tape_bytes: int | None = None) -> BackendChoice:
    """Pick ``forward-manual`` / ``forward-jvp`` or ``reverse-checkpointed`` (see the module docstring).

    ``free_bytes`` is the memory budget (None: no constraint); reverse mode's regime (taped
    segments, every state stored, or checkpoints every ``k``) is the one the budget allows, and the
    reason names it.  ``tape_bytes`` is one taped step's graph (None: reverse mode cannot tape).  ``has_hand_tangent`` (the rule's
    ``hand_tangent``) decides ``forward-manual`` over ``forward-jvp``.

    Example:
        >>> choose_backend(9, 15_210, "cpu", None, 1000).name
        'reverse-checkpointed'
        >>> choose_backend(1, 15_210, "cuda", None, 1000, has_hand_tangent=False).name
        'forward-jvp'
    """
    integer("n_values", n_values)
    integer("n_params", n_params, high=10**15)
    integer("horizon", horizon)
    if device_type not in ("cpu", "cuda"):
        raise ConfigError("device_type", f"must be cpu or cuda, got {device_type!r}")
    if free_bytes is not None and free_bytes < 0:
        raise ConfigError("free_bytes", f"must be at least 0, got {free_bytes}")
    fwd_name = "forward-manual" if has_hand_tangent else "forward-jvp"
    plan = reverse_plan(n_params, horizon, free_bytes, dtype_bytes, tape_bytes)
    c_fwd, c_rev = forward_cost(n_values, device_type), reverse_cost(device_type, horizon, plan.every, plan.taped, plan.whole_run)
    m_fwd, m_rev = forward_bytes(n_values, n_params, dtype_bytes), plan.bytes
    costs = (f"forward {c_fwd:.1f} vs reverse {c_rev:.1f} plain steps per step ({n_values} values on "
             f"{device_type}), memory {_mib(m_fwd)} vs {_mib(m_rev)}; reverse regime: {plan.regime}, k={plan.every}")
    fits_fwd = free_bytes is None or m_fwd <= free_bytes
    fits_rev = plan.regime != OVER_BUDGET
    if fits_fwd and not fits_rev:
        return BackendChoice(fwd_name, f"only forward mode fits in {_mib(free_bytes or 0)}: {costs}")
    if fits_rev and not fits_fwd:
        return BackendChoice("reverse-checkpointed", f"only reverse mode fits in {_mib(free_bytes or 0)}: {costs}")
    if not fits_fwd:  # neither fits: the smaller may still run with less other memory in use
        name = fwd_name if m_fwd <= m_rev else "reverse-checkpointed"
        return BackendChoice(name, f"neither fits in {_mib(free_bytes or 0)}, the smaller: {costs}")
    if c_rev < c_fwd:
        return BackendChoice("reverse-checkpointed", f"cheaper: {costs}")
    return BackendChoice(fwd_name, f"cheaper or as cheap, memory flat in the horizon: {costs}")
