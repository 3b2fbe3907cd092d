"""The ``torch.compile``d forward step computes the same hypergradient as the eager one and reverse mode.

Compiled with the ``aot_eager`` backend (dynamo + functorch capture, no code generation) to keep
the test fast on a CPU; ``inductor`` is exercised by ``benchmarks/step_cost.py --compile inductor``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hpo.backends.forward import ForwardJvpBackend, ForwardManualBackend
from hpo.checking.unroll import reverse_hypergradient
from hpo.core.backend import run_inner
from hpo.core.schedule import Schedule
from hpo.optimizers.sgd import SGDMomentum
from hpo.runtime.device import device_for_tests
from tests.conftest import tensor_problem

DEV = device_for_tests()


@pytest.mark.parametrize("backend_cls", [ForwardManualBackend, ForwardJvpBackend], ids=lambda c: c.name)
def test_compiled_step_equals_eager_and_reverse_with_batchnorm(backend_cls: type) -> None:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 3)).to(DEV, torch.float64)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(30, 5, generator=gen, dtype=torch.float64).to(DEV)
    y = torch.randint(0, 3, (30,), generator=gen).to(DEV)
    problem = tensor_problem(net, SGDMomentum(), x[:20], y[:20], x[20:], y[20:], horizon=5, batch_size=5, seed=2)
    # one value per type: a single phase, hence a single compiled graph
    sched = Schedule({k: torch.tensor([v], dtype=torch.float64, device=DEV)
                      for k, v in {"lr": 0.2, "momentum": 0.7, "wd": 0.01}.items()})
    compiled = run_inner(backend_cls(compile="aot_eager"), problem, sched)
    eager = run_inner(backend_cls(), problem, sched)
    ref = reverse_hypergradient(problem, sched.values)
    for k in ref:
        assert ref[k].abs().max() > 1e-6
        torch.testing.assert_close(compiled.hypergrad[k], eager.hypergrad[k], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(compiled.hypergrad[k], ref[k], rtol=1e-9, atol=1e-12)
