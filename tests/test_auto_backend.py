"""The cost model of ``--backend auto``: literal choices for the cases it exists for."""

from __future__ import annotations

import pytest

from hpo.backends.auto import BackendChoice, choose_backend, forward_bytes, reverse_bytes
from hpo.errors import ConfigError

MLP = 15_210  # weights of the MNIST-1D MLP the CPU constants were measured on
MIB = 2**20


def test_nine_values_on_a_cpu_use_reverse_mode() -> None:
    """Measured: 7/1/1 forward-manual 12.8x (MLP) / 14.2x (LeNet) a plain step, reverse-checkpointed 4.0x-7.2x."""
    choice = choose_backend(9, MLP, "cpu", None, 1000)
    assert choice == BackendChoice("reverse-checkpointed", choice.reason)
    assert choice.reason.startswith("cheaper: forward 12.7 vs reverse 4.2 plain steps per step (9 values on cpu)")
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
    assert reverse_bytes(n_params, horizon) == 2 * 200 * n_params * 4
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
