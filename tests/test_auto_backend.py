"""The cost model of ``--backend auto``: literal choices for the cases it exists for."""

from __future__ import annotations

import pytest

from hpo.backends.auto import BackendChoice, choose_backend, forward_bytes, reverse_bytes, reverse_cost
from hpo.errors import ConfigError

MLP = 15_210  # weights of the MNIST-1D MLP the CPU constants were measured on
MIB = 2**20


def test_nine_values_on_a_cpu_use_reverse_mode() -> None:
    """Measured: 7/1/1 forward-manual 12.8x (MLP) / 14.2x (LeNet) a plain step, reverse-checkpointed 3.6x-5.1x."""
    choice = choose_backend(9, MLP, "cpu", None, 1000)
    assert choice == BackendChoice("reverse-checkpointed", choice.reason)
    assert choice.reason.startswith("cheaper: forward 12.7 vs reverse 4.1 plain steps per step (9 values on cpu)")
    run = choose_backend(9, MLP, "cpu", None, 1000, tape_bytes=10**6)  # no budget: the whole run taped
    assert run.reason.startswith("cheaper: forward 12.7 vs reverse 2.7 plain steps per step")
    assert run.reason.endswith("reverse regime: whole run taped, nothing recomputed, k=1000")
    taped = choose_backend(9, MLP, "cpu", 200 * MIB, 1000, tape_bytes=10**6)  # 1000 step graphs do not fit, 32 do
    assert taped.reason.startswith("cheaper: forward 12.7 vs reverse 3.8 plain steps per step")
    assert taped.reason.endswith("reverse regime: sqrt(T) checkpoints, segments taped, k=32")
    assert "\n" not in choice.reason


def test_one_or_two_values_on_a_cpu_use_forward_mode() -> None:
    assert choose_backend(1, MLP, "cpu", None, 1000).name == "forward-manual"
    assert choose_backend(2, MLP, "cpu", None, 1000).name == "forward-manual"
    assert choose_backend(3, MLP, "cpu", None, 1000).name == "reverse-checkpointed"


def test_the_hand_tangent_decides_manual_or_jvp() -> None:
    assert choose_backend(1, MLP, "cuda", None, 1000).name == "forward-manual"
    assert choose_backend(1, MLP, "cuda", None, 1000, has_hand_tangent=False).name == "forward-jvp"
    assert choose_backend(1, MLP, "cpu", None, 1000, has_hand_tangent=False).name == "forward-jvp"


def test_on_a_gpu_columns_are_nearly_free_up_to_the_assumed_width() -> None:
    assert choose_backend(9, MLP, "cuda", None, 1000).name == "forward-manual"
    assert choose_backend(21, MLP, "cuda", None, 1000).name == "forward-manual"
    assert choose_backend(102, MLP, "cuda", None, 1000).name == "reverse-checkpointed"


def test_no_memory_for_sqrt_t_states_falls_back_to_forward_mode() -> None:
    """1e6 weights, T = 10^4: 200 states need 1.6 GB; 9 tangent columns need 72 MB."""
    n_params, horizon = 10**6, 10_000
    assert reverse_bytes(n_params, horizon) == 2 * 199 * n_params * 4  # T/k + k - 1 states, k = 100
    assert forward_bytes(9, n_params) == 2 * 9 * n_params * 4
    choice = choose_backend(9, n_params, "cpu", 500 * MIB, horizon)
    assert choice.name == "forward-manual" and choice.reason.startswith("only forward mode fits in 500 MiB")
    assert choose_backend(9, n_params, "cpu", 4000 * MIB, horizon).name == "reverse-checkpointed"


def test_no_memory_for_the_columns_falls_back_to_reverse_mode() -> None:
    """1000 values of 1e6 weights need 8 GB of tangents; 20 states of T = 100 need 160 MB."""
    choice = choose_backend(1000, 10**6, "cuda", 1024 * MIB, 100)
    assert choice.name == "reverse-checkpointed" and choice.reason.startswith("only reverse mode fits")


def test_when_neither_fits_the_smaller_is_chosen() -> None:
    assert choose_backend(9, 10**8, "cuda", MIB, 10_000).name == "forward-manual"
    assert choose_backend(1000, 10**8, "cpu", MIB, 100).name == "reverse-checkpointed"


@pytest.mark.parametrize("kwargs,field", [
    ({"n_values": 0}, "n_values"), ({"n_params": 0}, "n_params"), ({"horizon": 0}, "horizon"),
    ({"device_type": "tpu"}, "device_type"), ({"free_bytes": -1}, "free_bytes"),
])
def test_bad_input_names_its_field(kwargs: dict, field: str) -> None:
    args = {"n_values": 9, "n_params": MLP, "device_type": "cpu", "free_bytes": None, "horizon": 100, **kwargs}
    with pytest.raises(ConfigError) as err:
        choose_backend(**args)
    assert err.value.field == field and "--" not in str(err.value)


def test_the_reason_names_the_regime_the_budget_allows() -> None:
    """T = 1000 states of 2 x 15,210 float32 weights: 116 MiB for all; at least 63 states with one level."""
    state = 2 * MLP * 4
    assert choose_backend(9, MLP, "cpu", None, 1000).reason.endswith("reverse regime: all states stored, k=1")
    assert choose_backend(9, MLP, "cpu", 1000 * state, 1000).reason.endswith("all states stored, k=1")
    assert choose_backend(9, MLP, "cpu", 999 * state, 1000).reason.endswith("every k-th state, k=2")
    assert choose_backend(9, MLP, "cpu", 63 * state, 1000).reason.endswith("every k-th state, k=28")  # S = 63
    assert choose_backend(9, MLP, "cpu", 62 * state, 1000).reason.endswith("over budget, k=32")
    assert choose_backend(9, MLP, "cpu", 19 * state, 100).reason.endswith("sqrt(T) checkpoints, k=10")
    assert reverse_cost("cpu", 1000, 1) < reverse_cost("cpu", 1000, 2) < reverse_cost("cpu", 1000, 32)


def test_auto_passes_its_memory_budget_to_reverse_mode() -> None:
    from hpo.backends.auto_backend import AutoBackend
    from hpo.backends.reverse_checkpointed import ReverseCheckpointedBackend

    backend = AutoBackend(memory_budget="64MiB")
    assert backend.memory_budget == 64 * MIB
    built = backend.build("reverse-checkpointed", backend.memory_budget)
    assert isinstance(built, ReverseCheckpointedBackend) and built.memory_budget == 64 * MIB
    with pytest.raises(ConfigError) as err:
        AutoBackend(memory_budget="lots")
    assert err.value.field == "memory_budget" and "\n" not in str(err.value)


def test_auto_measures_the_tape_and_runs_the_regime_it_names() -> None:
    from hpo.backends.auto_backend import AutoBackend, tape_bytes
    from hpo.backends.reverse_checkpointed import ReverseCheckpointedBackend
    from hpo.core.backend import run_inner
    from tests import conftest as helpers

    problem = helpers.tiny_problem(horizon=16)
    sched = helpers.sgd_schedule()
    choice = AutoBackend().choose(problem, sched)
    assert choice.name == "reverse-checkpointed" and choice.reason.endswith("whole run taped, nothing recomputed, k=16")
    res = run_inner(AutoBackend(), problem, sched)
    assert res.info["regime"] == "whole run taped, nothing recomputed" and res.info["every"] == 16
    backend = ReverseCheckpointedBackend()
    measured = backend.step(problem, sched, backend.init(problem, sched), 0, problem.batch(0)).graph_bytes
    assert tape_bytes(problem) == measured > 0  # the probe predicts the backend's own measurement
    one = backend.state_bytes(problem, problem.rule.init(problem.params))
    segments = AutoBackend(memory_budget=4 * one + 4 * measured)  # 4 checkpoints and one 4-step tape
    assert segments.choose(problem, sched).reason.endswith("segments taped, k=4")
    res = run_inner(segments, problem, sched)
    assert res.info["regime"] == "sqrt(T) checkpoints, segments taped" and res.info["every"] == 4
