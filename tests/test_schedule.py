"""Shared schedules: the segment mapping, stretching, JSON."""

import json

import pytest
import torch

from hpo.core.schedule import Schedule, check_counts, segment_index, segment_indices, segment_starts
from hpo.optimizers.sgd import SGDMomentum


def test_segment_indices_literal():
    assert segment_indices(10, 3).tolist() == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert segment_indices(7, 7).tolist() == [0, 1, 2, 3, 4, 5, 6]
    assert segment_indices(5, 1).tolist() == [0, 0, 0, 0, 0]
    assert segment_indices(12, 5).tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 3, 3, 4, 4]
    assert [segment_index(t, 300, 7) for t in (0, 42, 43, 85, 86, 299)] == [0, 0, 1, 1, 2, 6]


def test_segment_starts_are_first_steps_of_each_segment():
    assert segment_starts(10, 3) == [0, 4, 7]
    assert segment_starts(12, 5) == [0, 3, 5, 8, 10]
    for horizon, n in [(10, 3), (12, 5), (300, 7), (7, 7)]:
        idx = segment_indices(horizon, n).tolist()
        assert segment_starts(horizon, n) == [idx.index(j) for j in range(n)]


def test_stretching_keeps_fractions_of_the_horizon():
    s = Schedule({"lr": torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)})
    assert s.dense(6)["lr"].tolist() == [1, 1, 2, 2, 3, 3]
    assert s.dense(9)["lr"].tolist() == [1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert s.at(599, 600) == {"lr": 3.0} and s.at(200, 600) == {"lr": 2.0}


def test_counts_are_checked():
    check_counts({"lr": 7, "momentum": 1}, 7)
    with pytest.raises(ValueError, match="at least 1"):
        check_counts({"lr": 0}, 10)
    with pytest.raises(ValueError, match="need at least 8 inner steps"):
        check_counts({"lr": 8}, 7)


def test_initial_schedule_uses_rule_defaults():
    s = Schedule.initial(SGDMomentum())
    assert s.counts == {"lr": 7, "momentum": 1, "wd": 1}
    assert all(float(v.abs().sum()) == 0 for v in s.values.values())
    s = Schedule.initial(SGDMomentum(), counts={"momentum": 3}, init={"lr": 0.2})
    assert s.counts == {"lr": 7, "momentum": 3, "wd": 1} and s.values["lr"].tolist() == [0.2] * 7


def test_json_round_trip_and_errors(tmp_path):
    s = Schedule({"lr": torch.tensor([0.1, 0.2], dtype=torch.float64), "momentum": torch.tensor([0.9], dtype=torch.float64),
                  "wd": torch.tensor([5e-4], dtype=torch.float64)})
    path = tmp_path / "s.json"
    s.save(path)
    assert json.loads(path.read_text()) == {"lr": [0.1, 0.2], "momentum": [0.9], "wd": [0.0005]}
    assert Schedule.load(path).to_dict() == s.to_dict()
    s.check(SGDMomentum())
    path.write_text("{not json")
    with pytest.raises(ValueError, match="cannot read schedule"):
        Schedule.load(path)
    path.write_text('{"lr": []}')
    with pytest.raises(ValueError, match="non-empty list"):
        Schedule.load(path)
    with pytest.raises(ValueError, match="out of range"):
        Schedule.constant({"lr": 0.1, "momentum": 1.0, "wd": 0.0}).check(SGDMomentum())
