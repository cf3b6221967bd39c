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


def _model(value):
    model = torch.nn.Linear(2, 1)
    torch.nn.init.constant_(model.weight, value)
    return model


def test_checkpointer_keeps_the_best_model_of_each_tracked_metric(tmp_path):
    from mtlkit import Checkpointer

    checkpointer = Checkpointer(
        checkpoint_dir=tmp_path,
        checkpoint_metric="t/d/valid/acc:max",
        checkpoint_task_metrics=["t/d/valid/loss:min"],
        checkpoint_runway=1,
    )
    checkpointer.checkpoint(0, _model(9.0), {"t/d/valid/acc": 1.0})  # before the runway: nothing
    assert checkpointer.best_metric_dict == {} and not list(tmp_path.iterdir())
    checkpointer.checkpoint(1, _model(1.0), {"t/d/valid/acc": 0.5, "t/d/valid/loss": 0.9})
    checkpointer.checkpoint(2, _model(2.0), {"t/d/valid/acc": 0.7, "t/d/valid/loss": 1.2})
    checkpointer.checkpoint(3, _model(3.0), {"t/d/valid/acc": 0.6, "t/d/valid/loss": 0.4})
    assert checkpointer.best_metric_dict == {"t/d/valid/acc": 0.7, "t/d/valid/loss": 0.4}
    names = {p.name for p in tmp_path.iterdir()}
    assert names == {
        "checkpoint_1.pth",
        "checkpoint_2.pth",
        "checkpoint_3.pth",
        "best_model_t_d_valid_acc.pth",
        "best_model_t_d_valid_loss.pth",
    }
    checkpointer.clear()
    assert {p.name for p in tmp_path.iterdir()} == {"best_model_t_d_valid_acc.pth", "best_model_t_d_valid_loss.pth"}
    model = checkpointer.load_best_model(_model(0.0))
    assert torch.all(model.weight == 2.0)  # the weights at the best accuracy, read without unpickling code
    assert torch.all(ck.load_checkpoint(tmp_path / "best_model_t_d_valid_loss.pth")["model"]["weight"] == 3.0)


def test_checkpointer_without_a_best_model_leaves_the_model_alone(tmp_path):
    from mtlkit import Checkpointer

    checkpointer = Checkpointer(checkpoint_dir=tmp_path, checkpoint_metric="t/d/valid/acc:max")
    checkpointer.checkpoint(1, _model(1.0), {"other/d/valid/acc": 0.3})
    assert torch.all(checkpointer.load_best_model(_model(5.0)).weight == 5.0)


def test_checkpointer_options_are_checked_before_any_folder_is_made(tmp_path):
    from mtlkit import Checkpointer, ConfigError

    folder = tmp_path / "never"
    with pytest.raises(ValueError, match="checkpoint_runway"):
        Checkpointer(checkpoint_dir=folder, checkpoint_runway=-1)
    with pytest.raises(ValueError, match="checkpoint freq"):
        Checkpointer(checkpoint_dir=folder, checkpoint_factor=0)
    with pytest.raises(ConfigError, match="metric_name:mode"):
        Checkpointer(checkpoint_dir=folder, checkpoint_metric="accuracy:max")
    with pytest.raises(ConfigError, match="metric mode 'best'"):
        Checkpointer(checkpoint_dir=folder, checkpoint_metric="t/d/s/acc:best")
    with pytest.raises(TypeError, match="checkpoint_every.*checkpoint_factor"):
        Checkpointer(checkpoint_dir=folder, checkpoint_every=2)
    assert not folder.exists()
