import math
from collections import Counter

import pytest
import torch

from mtlkit.data import (
    DictDataLoader,
    DictDataset,
    RoundRobinScheduler,
    SequentialScheduler,
    ShuffledScheduler,
    TemperatureScheduler,
    get_scheduler,
)


def _loaders(sizes=(7, 3, 5), batch_size=2, shuffle=True):
    loaders = []
    for k, n in enumerate(sizes):
        ds = DictDataset(f"ds{k}", "train", {"x": torch.zeros(n, 1)}, {f"task{k}": torch.arange(n)})
        loaders.append(DictDataLoader(ds, batch_size=batch_size, shuffle=shuffle, seed=k))
    return loaders


def _rows_seen(scheduler, loaders):
    seen = []
    for (_, Y), loader in scheduler.get_batches(loaders):
        (label,) = Y
        seen += [(loader.dataset.name, i) for i in Y[label].tolist()]
    return seen


@pytest.mark.parametrize("name", ["sequential", "shuffled", "round_robin", "temperature"])
def test_every_row_seen_exactly_once_per_epoch(name):
    loaders = _loaders()
    scheduler = get_scheduler(name)  # temperature defaults to T=1: proportional, one pass
    for epoch in range(2):
        scheduler.set_epoch(epoch)
        seen = _rows_seen(scheduler, loaders)
        expected = [(ld.dataset.name, i) for ld in loaders for i in range(len(ld.dataset))]
        assert sorted(seen) == sorted(expected)


def test_sequential_and_round_robin_orders():
    assert SequentialScheduler().plan([2, 0, 3]) == [0, 0, 2, 2, 2]
    assert RoundRobinScheduler().plan([3, 1, 2]) == [0, 1, 2, 0, 2, 0]


def test_shuffled_plan_holds_each_loader_count_times_and_depends_on_seed_and_epoch():
    scheduler = ShuffledScheduler(seed=5)
    first = scheduler.plan([4, 2, 6])
    assert Counter(first) == {0: 4, 1: 2, 2: 6}
    assert ShuffledScheduler(seed=5).plan([4, 2, 6]) == first
    scheduler.set_epoch(1)
    assert scheduler.plan([4, 2, 6]) != first
    scheduler.set_epoch(0)
    assert scheduler.plan([4, 2, 6]) == first


def test_get_batches_reshuffles_inside_loaders_per_epoch_reproducibly():
    def run(epoch):
        scheduler = ShuffledScheduler(seed=1)
        scheduler.set_epoch(epoch)
        return _rows_seen(scheduler, _loaders())

    assert run(0) == run(0) and run(1) == run(1) and run(0) != run(1)


def test_temperature_shares_follow_n_to_the_one_over_t():
    counts = [100, 10, 1]
    for T in (1.0, 2.0, 5.0):
        p = TemperatureScheduler(temperature=T).probabilities(counts)
        reference = [n ** (1 / T) / sum(m ** (1 / T) for m in counts) for n in counts]
        assert p == pytest.approx(reference)


def test_temperature_one_is_proportional_and_infinity_is_uniform():
    assert TemperatureScheduler(1.0).quotas([8, 3, 1]) == [8, 3, 1]
    assert TemperatureScheduler(float("inf")).quotas([8, 3, 1]) == [4, 4, 4]


def test_temperature_quotas_sum_to_epoch_length_and_round_within_one():
    scheduler = TemperatureScheduler(temperature=3.0, batches_per_epoch=101)
    counts = [50, 20, 7, 1]
    quotas = scheduler.quotas(counts)
    assert sum(quotas) == 101
    for q, p in zip(quotas, scheduler.probabilities(counts)):
        assert abs(q - 101 * p) < 1


def test_temperature_order_is_well_mixed():
    # Statistical check: the first half of a long epoch holds about half of each quota
    # (hypergeometric, checked at 5 standard deviations on a fixed seed).
    scheduler = TemperatureScheduler(temperature=2.0, batches_per_epoch=2000, seed=0)
    plan = scheduler.plan([400, 100, 25])
    quotas = scheduler.quotas([400, 100, 25])
    half = Counter(plan[:1000])
    for index, q in enumerate(quotas):
        sd = math.sqrt(q * (1 - q / 2000) * 0.25 * 2000 / 1999)
        assert abs(half[index] - q / 2) < 5 * sd


def test_temperature_restarts_a_small_loader_for_extra_steps():
    loaders = _loaders(sizes=(8, 2), batch_size=2)  # 4 and 1 batches
    scheduler = TemperatureScheduler(temperature=float("inf"))  # 5 steps: quotas [3, 2]
    seen = Counter(name for name, _ in _rows_seen(scheduler, loaders))
    assert seen == {"ds0": 6, "ds1": 4}


def test_empty_loader_asked_for_a_batch_is_an_error():
    loaders = _loaders(sizes=(4,))
    with pytest.raises(ValueError, match="yielded no batch"):
        list(TemperatureScheduler(batches_per_epoch=2).get_batches([loaders[0], _EmptyButCounted(loaders[0])]))


class _EmptyButCounted(torch.utils.data.DataLoader):
    def __init__(self, like):
        super().__init__(like.dataset)

    def __len__(self):
        return 5

    def __iter__(self):
        return iter(())


def test_get_scheduler_by_name_instance_and_unknown():
    assert isinstance(get_scheduler("round_robin"), RoundRobinScheduler)
    assert get_scheduler("temperature", temperature=2.0).temperature == 2.0
    instance = ShuffledScheduler()
    assert get_scheduler(instance) is instance
    with pytest.raises(ValueError, match="round_robin"):
        get_scheduler("random")


def test_invalid_temperature_is_rejected():
    with pytest.raises(ValueError, match="temperature"):
        TemperatureScheduler(temperature=0)
