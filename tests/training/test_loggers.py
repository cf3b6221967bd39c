import json

import pytest

from mtlkit import Checkpointer, LogManager, LogWriter, TensorBoardWriter
from mtlkit.training.loggers import build_loggers


def _records(path):
    return [json.loads(line) for line in (path / "log.jsonl").read_text().splitlines()]


def test_json_lines_hold_step_epoch_and_values(tmp_path):
    logger = LogWriter(tmp_path)
    logger.log({"train/loss": 0.5, "a/d/valid/accuracy": 1.0}, step=3, epoch=1)
    logger.close()
    assert _records(tmp_path) == [{"step": 3, "epoch": 1, "train/loss": 0.5, "a/d/valid/accuracy": 1.0}]


def test_nonfinite_values_are_written_as_null(tmp_path):
    logger = LogWriter(tmp_path)
    logger.log({"x": float("nan"), "y": float("inf")}, step=1, epoch=0)
    logger.close()
    assert _records(tmp_path)[0]["x"] is None and _records(tmp_path)[0]["y"] is None


def test_fresh_run_truncates_and_resumed_run_appends(tmp_path):
    for resume_step, step in ((None, 1), (None, 2), (2, 3)):
        (logger,) = build_loggers(("json",), str(tmp_path), resume_step)
        logger.log({"v": 1.0}, step=step, epoch=0)
        logger.close()
    assert [r["step"] for r in _records(tmp_path)] == [2, 3]


def test_log_writer_collects_scalars_into_snorkel_log_json_at_cleanup(tmp_path):
    writer = LogWriter(log_dir=tmp_path, run_name="run1")
    writer.log({"loss": 0.5}, step=1, epoch=0)
    writer.add_scalar("loss", float("nan"), step=2)
    writer.cleanup()
    folder = tmp_path / "run1"
    assert writer.log_dir == str(folder)
    assert json.loads((folder / "log.json").read_text()) == {"loss": [[1, 0.5], [2, None]]}
    assert _records(folder) == [{"step": 1, "epoch": 0, "loss": 0.5}]


def test_log_writer_alone_writes_only_what_it_is_asked_to(tmp_path):
    writer = LogWriter(log_dir=tmp_path)
    writer.write_text("hello", "note.txt")
    writer.write_config({"lr": 0.1}, "cfg.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg.json", "note.txt"]  # no log.jsonl before a record
    assert json.loads((tmp_path / "cfg.json").read_text()) == {"lr": 0.1}


def test_write_config_takes_the_trainer_config(tmp_path):
    from mtlkit.training import TrainerConfig

    LogWriter(tmp_path).write_config(TrainerConfig(n_epochs=3))
    assert json.loads((tmp_path / "config.json").read_text())["n_epochs"] == 3


def test_resumed_writer_continues_log_json(tmp_path):
    first = LogWriter(tmp_path)
    first.log({"v": 1.0}, step=1, epoch=0)
    first.close()
    second = LogWriter(tmp_path, append=True)
    second.log({"v": 2.0}, step=2, epoch=1)
    second.close()
    assert json.loads((tmp_path / "log.json").read_text()) == {"v": [[1, 1.0], [2, 2.0]]}


def test_tensorboard_writer_writes_events_and_the_config(tmp_path):
    pytest.importorskip("tensorboard")
    writer = TensorBoardWriter(log_dir=tmp_path, run_name="tb")
    writer.log({"loss": 0.25}, step=1, epoch=0)
    writer.write_config({"a": 1})
    writer.cleanup()
    assert json.loads((tmp_path / "tb" / "config.json").read_text()) == {"a": 1}
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tb").iterdir())


def test_log_manager_triggers_evaluation_per_unit_and_checkpoints_per_factor(tmp_path):
    checkpointer = Checkpointer(counter_unit="batches", evaluation_freq=2, checkpoint_dir=tmp_path, checkpoint_factor=2)
    manager = LogManager(n_batches_per_epoch=4, checkpointer=checkpointer, counter_unit="batches", evaluation_freq=2)
    pattern = []
    for _ in range(8):
        manager.update(batch_size=3)
        pattern.append((manager.trigger_evaluation(), manager.trigger_checkpointing()))
    evaluations = [i for i, (e, _) in enumerate(pattern) if e]
    checkpoints = [i for i, (_, c) in enumerate(pattern) if c]
    assert evaluations == [1, 3, 5, 7] and checkpoints == [3, 7]  # every 2 batches; every 2nd evaluation
    assert (manager.point_total, manager.batch_total, manager.epoch_total) == (24, 8, 2.0)


def test_log_manager_counts_points_and_refuses_unknown_units():
    manager = LogManager(n_batches_per_epoch=10, counter_unit="points", evaluation_freq=10)
    manager.update(6)
    assert not manager.trigger_evaluation()
    manager.update(6)
    assert manager.trigger_evaluation() and manager.point_count == 0
    with pytest.raises(ValueError, match="counter_unit 'steps'"):
        LogManager(n_batches_per_epoch=2, counter_unit="steps")
