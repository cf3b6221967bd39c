import random

import numpy
import pytest
import torch

from mtlkit.training import checkpoint as ck


def test_save_then_load_round_trips_tensors_and_plain_values(tmp_path):
    state = {"w": torch.arange(3.0), "counters": {"epoch": 2}, "python": random.getstate(), "none": None}
    ck.save_checkpoint(state, tmp_path / "c.pt")
    loaded = ck.load_checkpoint(tmp_path / "c.pt")
    assert torch.equal(loaded["w"], state["w"])
    assert loaded["counters"] == {"epoch": 2} and loaded["python"] == state["python"] and loaded["none"] is None


def test_save_leaves_no_temporary_file(tmp_path):
    ck.save_checkpoint({"x": 1}, tmp_path / "c.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    ck.save_checkpoint({"x": 1}, path)

    def half_write(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(ck.torch, "save", half_write)
    with pytest.raises(OSError, match="disk full"):
        ck.save_checkpoint({"x": 2}, path)
    monkeypatch.undo()
    assert ck.load_checkpoint(path)["x"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_loading_refuses_a_file_that_would_run_code(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"format": ck.FORMAT_VERSION, "x": _Payload()}, path)
    with pytest.raises(ck.CheckpointError, match="never runs code") as refused:
        ck.load_checkpoint(path)
    assert "weights_only=False" not in str(refused.value) and refused.value.__cause__ is None
    assert "this must never run" not in capsys.readouterr().out


def test_loading_a_foreign_file_names_the_format(tmp_path):
    torch.save({"weights": torch.ones(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an mtlkit Trainer checkpoint"):
        ck.load_checkpoint(tmp_path / "other.pt")


def test_rng_states_survive_a_checkpoint_and_replay_the_same_draws(tmp_path):
    numpy.random.seed(1)
    ck.seed_everything(5)
    ck.save_checkpoint({"rng": ck.rng_state()}, tmp_path / "c.pt")
    expected = (torch.rand(3), random.random(), numpy.random.rand())
    torch.rand(7), random.random(), numpy.random.rand()  # move every generator on
    ck.set_rng_state(ck.load_checkpoint(tmp_path / "c.pt")["rng"])
    replay = (torch.rand(3), random.random(), numpy.random.rand())
    assert torch.equal(replay[0], expected[0]) and replay[1:] == expected[1:]


def test_seed_everything_seeds_torch_python_and_numpy():
    ck.seed_everything(3)
    first = (torch.rand(2), random.random(), numpy.random.rand())
    ck.seed_everything(3)
    second = (torch.rand(2), random.random(), numpy.random.rand())
    assert torch.equal(first[0], second[0]) and first[1:] == second[1:]
