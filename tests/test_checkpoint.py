"""Checkpoints: plain data loadable with weights_only=True, atomic writes, one-line errors."""

from __future__ import annotations

import pickle

import pytest
import torch

from hpo.app.checkpoint import Checkpoint, checkpoint_path, load_checkpoint, remove_stale_temporaries, save_checkpoint
from hpo.core.callbacks import OuterRecord
from hpo.outer.base import OuterState
from hpo.runtime.files import atomic_write


def make_checkpoint(k: int = 2) -> Checkpoint:
    state = OuterState(
        values={"lr": torch.tensor([0.1, 0.2], dtype=torch.float64), "wd": torch.tensor([3e-4], dtype=torch.float64)},
        steps={"lr": torch.tensor([0.1, 0.05], dtype=torch.float64), "wd": torch.tensor([3e-4], dtype=torch.float64)},
        signs={"lr": torch.tensor([-1.0, 1.0], dtype=torch.float64), "wd": torch.tensor([0.0], dtype=torch.float64)},
        k=k,
    )
    history = tuple(
        OuterRecord(k=i, horizon=10, steps_run=10, val_loss=2.0 - i, val_acc=0.1 * i,
                    hypergrad={"lr": [float("nan"), -0.5], "wd": [0.0]}, values={"lr": [0.1, 0.2], "wd": [3e-4]},
                    step_sizes={"lr": [0.1, 0.05], "wd": [3e-4]}, diverged=i == 0, seconds=1.5,
                    extra={"diverged_at": 3, "lowered": {"lr": [0]}} if i == 0 else {})
        for i in range(k)
    )
    options = {"seed": 3, "inner_steps": [10, 20], "counts": {"lr": 2}, "baseline": None, "progress": False,
               "logdir": "/tmp/x", "grad_clip": 1.5}
    return Checkpoint(state, history, options, 12.5)


def test_round_trip_through_weights_only_load(tmp_path) -> None:
    ck = make_checkpoint()
    path = checkpoint_path(tmp_path)
    save_checkpoint(path, ck)
    raw = torch.load(path, weights_only=True)  # no code runs: plain tensors, numbers, strings, lists, dicts
    assert raw["format"] == "hpo-fds-checkpoint" and raw["state"]["k"] == 2
    back = load_checkpoint(path)
    assert back.state.k == 2
    for part in ("values", "steps", "signs"):
        a, b = getattr(back.state, part), getattr(ck.state, part)
        assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)
    assert back.config == ck.config and back.search_seconds == 12.5
    assert [r.extra for r in back.history] == [r.extra for r in ck.history]
    assert back.history[1].val_loss == 1.0 and back.history[0].diverged
    assert back.history[0].hypergrad["lr"][1] == -0.5


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path) -> None:
    path = checkpoint_path(tmp_path)
    save_checkpoint(path, make_checkpoint(1))
    before = path.read_bytes()

    def crash(f) -> None:
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(path, crash)
    assert path.read_bytes() == before
    assert load_checkpoint(path).state.k == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"], "no temporary file is left behind"


def test_stale_temporaries_are_removed(tmp_path) -> None:
    (tmp_path / ".checkpoint.pt.abc123.tmp").write_bytes(b"killed while writing")
    (tmp_path / "keep.txt").write_text("x")
    remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


class Foreign:
    """A pickled object that would need code (this class) to load."""

    def __init__(self) -> None:
        self.x = 1


def _bad_files(tmp_path):
    good = checkpoint_path(tmp_path / "good")
    good.parent.mkdir()
    save_checkpoint(good, make_checkpoint())
    data = good.read_bytes()
    cases = {
        "garbage": b"\x00\x01 this is not a checkpoint \xff" * 10,
        "truncated": data[: len(data) // 2],
        "empty": b"",
        "text": b'{"format": "hpo-fds-checkpoint"}',
    }
    for name, blob in cases.items():
        p = tmp_path / f"{name}.pt"
        p.write_bytes(blob)
        yield name, p
    p = tmp_path / "pickle.pt"
    p.write_bytes(pickle.dumps(Foreign()))
    yield "plain pickle of a class", p
    p = tmp_path / "module.pt"
    torch.save(torch.nn.Linear(2, 2), p)
    yield "torch.save of a module", p
    p = tmp_path / "state_dict.pt"
    torch.save(torch.nn.Linear(2, 2).state_dict(), p)
    yield "a state dict", p
    tampered = make_checkpoint().to_dict()
    tampered["history"] = tampered["history"][:1]
    p = tmp_path / "tampered.pt"
    torch.save(tampered, p)
    yield "history shorter than k", p
    tampered = make_checkpoint().to_dict()
    tampered["state"]["values"]["lr"] = torch.tensor([float("nan"), 0.1], dtype=torch.float64)
    p = tmp_path / "nan.pt"
    torch.save(tampered, p)
    yield "non-finite values", p
    tampered = make_checkpoint().to_dict()
    tampered["version"] = 99
    p = tmp_path / "future.pt"
    torch.save(tampered, p)
    yield "newer version", p
    yield "missing", tmp_path / "nothing-here.pt"


def test_corrupt_or_foreign_checkpoints_give_one_line_errors(tmp_path) -> None:
    seen = 0
    for name, path in _bad_files(tmp_path):
        with pytest.raises(ValueError) as info:
            load_checkpoint(path)
        msg = str(info.value)
        assert "\n" not in msg and str(path) in msg, (name, msg)
        seen += 1
    assert seen == 11


def test_good_point_and_coordinates_survive_a_checkpoint(tmp_path) -> None:
    from dataclasses import replace

    ck = make_checkpoint()
    good = {"lr": torch.tensor([0.05, 0.1], dtype=torch.float64), "wd": torch.tensor([1e-4], dtype=torch.float64)}
    ck = replace(ck, state=replace(ck.state, good=good, kinds={"lr": "log", "wd": "log"}))
    path = checkpoint_path(tmp_path)
    save_checkpoint(path, ck)
    back = load_checkpoint(path).state
    assert back.kinds == {"lr": "log", "wd": "log"}
    assert back.good is not None and all(torch.equal(back.good[n], good[n]) for n in good)
    plain = make_checkpoint()  # none set: nothing extra written, None read back
    save_checkpoint(path, plain)
    assert load_checkpoint(path).state.good is None and load_checkpoint(path).state.kinds is None
    raw = plain.to_dict()
    raw["state"]["kinds"] = {"lr": "sqrt"}
    torch.save(raw, path)
    with pytest.raises(Exception, match="no valid 'kinds'"):
        load_checkpoint(path)
    raw["state"].pop("kinds")
    raw["state"]["good"] = {"lr": torch.tensor([float("nan"), 0.1], dtype=torch.float64)}
    torch.save(raw, path)
    with pytest.raises(Exception, match="no valid 'good'"):
        load_checkpoint(path)


def test_a_checkpoint_file_keeps_the_outer_optimizers_slots(tmp_path) -> None:
    """Adam's moments survive save and load: a resumed Adam outer loop continues, not restarts."""
    state = OuterState.start({"lr": torch.tensor([0.1, 0.2])}, {"lr": 0.05})
    state = OuterState(state.values, state.steps, state.signs, 0, state.good, state.kinds,
                       {"m": {"lr": torch.tensor([0.25, -0.5])}, "v": {"lr": torch.tensor([0.125, 2.0])}})
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, Checkpoint(state, (), {"outer": "adam"}))
    slots = load_checkpoint(path).state.slots
    assert torch.equal(slots["m"]["lr"], torch.tensor([0.25, -0.5], dtype=torch.float64))
    assert torch.equal(slots["v"]["lr"], torch.tensor([0.125, 2.0], dtype=torch.float64))
