import pytest

from mtlkit import ConfigError
from mtlkit.training.monitor import MetricMonitor


def test_min_mode_keeps_the_lowest_value_and_its_epoch():
    monitor = MetricMonitor("m/all/train/loss", "min")
    improved = [monitor.update({"m/all/train/loss": v}, epoch) for epoch, v in enumerate([3.0, 1.0, 2.0, 1.0], 1)]
    assert improved == [True, True, False, False]  # a tie is not an improvement
    assert (monitor.best, monitor.best_epoch) == (1.0, 2)


def test_max_mode_keeps_the_highest_value():
    monitor = MetricMonitor("t/d/valid/accuracy", "max")
    for epoch, v in enumerate([0.5, 0.9, 0.7], 1):
        monitor.update({"t/d/valid/accuracy": v}, epoch)
    assert (monitor.best, monitor.best_epoch) == (0.9, 2)


def test_patience_counts_evaluations_in_a_row_without_improvement():
    monitor = MetricMonitor("k/a/b/c", "min", patience=2)
    for epoch, v in enumerate([1.0, 2.0, 0.5, 2.0], 1):
        monitor.update({"k/a/b/c": v}, epoch)
        assert not monitor.should_stop
    monitor.update({"k/a/b/c": 2.0}, 5)
    assert monitor.should_stop


def test_runway_ignores_early_epochs():
    monitor = MetricMonitor("k/a/b/c", "min", runway=2, patience=1)
    assert not monitor.update({"k/a/b/c": 0.0}, 1)
    assert monitor.update({"k/a/b/c": 5.0}, 2)
    assert monitor.best_epoch == 2 and not monitor.should_stop


def test_missing_key_lists_close_keys():
    monitor = MetricMonitor("circle/circleDataset/valid/acc", "max")
    with pytest.raises(ConfigError, match="'circle/circleDataset/valid/accuracy'"):
        monitor.update({"circle/circleDataset/valid/accuracy": 1.0, "model/all/train/loss": 0.1}, 1)


def test_state_round_trips():
    monitor = MetricMonitor("k/a/b/c", "min", patience=3)
    monitor.update({"k/a/b/c": 1.0}, 1)
    monitor.update({"k/a/b/c": 2.0}, 2)
    copy = MetricMonitor("k/a/b/c", "min", patience=3)
    copy.load_state_dict(monitor.state_dict())
    assert copy.state_dict() == {"best": 1.0, "best_epoch": 1, "bad_evaluations": 1}
