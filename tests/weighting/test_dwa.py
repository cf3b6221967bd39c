import math

import torch

from mtlkit.weighting import get


def _step(dwa, values):
    losses = {name: torch.tensor(v, requires_grad=True) for name, v in values.items()}
    return {k: float(v) for k, v in dwa.backward(losses).weights.items()}


def test_weights_are_one_until_two_epoch_averages_exist():
    dwa = get("dwa", tasks=["a", "b"])
    assert _step(dwa, {"a": 1.0, "b": 5.0}) == {"a": 1.0, "b": 1.0}
    dwa.epoch_end()
    assert _step(dwa, {"a": 1.0, "b": 5.0}) == {"a": 1.0, "b": 1.0}


def test_weights_follow_the_ratio_of_the_last_two_epoch_averages():
    dwa = get("dwa", tasks=["a", "b"])  # temperature 2
    _step(dwa, {"a": 1.0, "b": 3.0})
    _step(dwa, {"a": 3.0, "b": 5.0})  # epoch 0 averages: a 2, b 4
    dwa.epoch_end()
    _step(dwa, {"a": 1.0, "b": 3.2})  # epoch 1 averages: a 1, b 3.2
    dwa.epoch_end()
    ea, eb = math.exp(0.5 / 2), math.exp(0.8 / 2)
    weights = _step(dwa, {"a": 7.0, "b": 7.0})
    assert math.isclose(weights["a"], 2 * ea / (ea + eb), rel_tol=1e-6)
    assert math.isclose(weights["b"], 2 * eb / (ea + eb), rel_tol=1e-6)


def test_a_task_absent_for_an_epoch_keeps_its_averages():
    dwa = get("dwa", tasks=["a", "b"])
    for values in ({"a": 2.0, "b": 4.0}, {"a": 1.0, "b": 2.0}):
        _step(dwa, values)
        dwa.epoch_end()
    _step(dwa, {"a": 0.5})  # b absent this epoch
    dwa.epoch_end()
    r_a, r_b = 0.5 / 1.0, 2.0 / 4.0
    ea, eb = math.exp(r_a / 2), math.exp(r_b / 2)
    weights = _step(dwa, {"a": 1.0, "b": 1.0})
    assert math.isclose(weights["b"], 2 * eb / (ea + eb), rel_tol=1e-6)


def test_state_dict_carries_the_running_averages():
    dwa = get("dwa", tasks=2)
    for values in ({"0": 2.0, "1": 4.0}, {"0": 1.0, "1": 3.0}):
        _step(dwa, values)
        dwa.epoch_end()
    restored = get("dwa", tasks=2)
    restored.load_state_dict(dwa.state_dict())
    assert _step(restored, {"0": 1.0, "1": 1.0}) == _step(dwa, {"0": 1.0, "1": 1.0})
