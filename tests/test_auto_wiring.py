"""``--backend auto``: the chosen backend does the work, and the hypergradient stays exact."""

from __future__ import annotations

import dataclasses

import torch

from hpo.backends.auto_backend import AutoBackend
from hpo.checking.unroll import reverse_hypergradient
from hpo.core.backend import run_inner
from tests.conftest import max_rel_err, sgd_schedule, tiny_problem


def test_auto_is_exact_and_says_what_it_chose() -> None:
    problem, schedule = tiny_problem(horizon=10), sgd_schedule()
    result = run_inner(AutoBackend(), problem, schedule)
    exact = reverse_hypergradient(problem, schedule.values)
    assert max_rel_err(result.hypergrad, exact) < 1e-10
    choice = AutoBackend().choose(problem, schedule)
    assert result.info["auto"] == choice.name and choice.reason
    assert choice.name == "reverse-checkpointed"  # 7 values on a CPU: the measured cost model prefers reverse


def test_auto_takes_forward_mode_when_a_hessian_tangent_clamp_is_set() -> None:
    problem = dataclasses.replace(tiny_problem(horizon=6), hz_clip=10.0)
    assert AutoBackend().choose(problem, sgd_schedule()).name == "forward-manual"
    assert torch.isfinite(run_inner(AutoBackend(), problem, sgd_schedule()).hypergrad["lr"]).all()
