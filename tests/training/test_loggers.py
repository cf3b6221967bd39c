import json

from mtlkit.training.loggers import LogWriter, build_loggers


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
