import pytest
import torch

from mtlkit.data import DictDataLoader, DictDataset, EpochSampler, collate_dicts, move_to_device


def _dataset(n=10):
    return DictDataset(
        "d",
        "train",
        {"x": torch.arange(n).float().unsqueeze(1), "ids": [f"id{i}" for i in range(n)]},
        {"t": torch.arange(n)},
    )


def test_collate_stacks_equal_shapes_and_keeps_non_tensors_as_lists():
    X, Y = collate_dicts(
        [
            ({"x": torch.ones(2), "s": "a"}, {"t": torch.tensor(1)}),
            ({"x": torch.zeros(2), "s": "b"}, {"t": torch.tensor(0)}),
        ]
    )
    assert torch.equal(X["x"], torch.tensor([[1.0, 1.0], [0.0, 0.0]]))
    assert X["s"] == ["a", "b"] and torch.equal(Y["t"], torch.tensor([1, 0]))


def test_collate_pads_1d_inputs_with_zero_and_labels_with_minus_one():
    batch = [
        ({"tok": torch.tensor([5, 6, 7])}, {"tags": torch.tensor([1, 2, 3])}),
        ({"tok": torch.tensor([8])}, {"tags": torch.tensor([4])}),
    ]
    X, Y = collate_dicts(batch)
    assert X["tok"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert Y["tags"].tolist() == [[1, 2, 3], [4, -1, -1]]


def test_collate_pads_2d_sequences_along_every_dimension():
    a, b = torch.ones(2, 3), torch.full((4, 1), 2.0)
    X, _ = collate_dicts([({"f": a}, {}), ({"f": b}, {})])
    expected = torch.zeros(2, 4, 3)
    expected[0, :2, :3] = 1.0
    expected[1, :4, :1] = 2.0
    assert torch.equal(X["f"], expected)


def test_collate_rejects_ragged_3d_and_mixed_entries_naming_the_key():
    with pytest.raises(ValueError, match=r"X_dict\['img'\]"):
        collate_dicts([({"img": torch.zeros(1, 2, 2)}, {}), ({"img": torch.zeros(1, 3, 3)}, {})])
    with pytest.raises(TypeError, match=r"X_dict\['x'\] mixes"):
        collate_dicts([({"x": torch.zeros(1)}, {}), ({"x": "a"}, {})])


def test_loader_yields_x_and_y_dicts():
    X, Y = next(iter(DictDataLoader(_dataset(), batch_size=4)))
    assert X["x"].shape == (4, 1) and X["ids"] == ["id0", "id1", "id2", "id3"] and Y["t"].tolist() == [0, 1, 2, 3]


def test_loader_requires_dict_dataset():
    with pytest.raises(TypeError, match="DictDataset"):
        DictDataLoader(torch.utils.data.TensorDataset(torch.zeros(2)))


def _order(loader):
    return [i for _, Y in loader for i in Y["t"].tolist()]


def test_shuffle_is_a_function_of_seed_and_epoch():
    a = DictDataLoader(_dataset(), batch_size=3, shuffle=True, seed=7)
    b = DictDataLoader(_dataset(), batch_size=3, shuffle=True, seed=7)
    first = _order(a)
    assert sorted(first) == list(range(10)) and first == _order(b)
    a.set_epoch(1)
    b.set_epoch(1)
    second = _order(a)
    assert second == _order(b) and second != first
    a.set_epoch(0)
    assert _order(a) == first


def test_shuffle_seed_drawn_from_global_generator_when_not_given():
    torch.manual_seed(3)
    a = DictDataLoader(_dataset(), batch_size=3, shuffle=True)
    torch.manual_seed(3)
    b = DictDataLoader(_dataset(), batch_size=3, shuffle=True)
    assert a.seed == b.seed and _order(a) == _order(b)


def test_second_pass_within_an_epoch_is_reshuffled():
    loader = DictDataLoader(_dataset(), batch_size=10, shuffle=True, seed=0)
    assert _order(loader) != _order(loader)


def test_unshuffled_loader_keeps_dataset_order():
    assert _order(DictDataLoader(_dataset(), batch_size=4)) == list(range(10))


def test_shards_cover_the_dataset_with_equal_lengths_per_rank():
    shards = [list(EpochSampler(10, shuffle=True, seed=1, num_replicas=3, rank=r)) for r in range(3)]
    assert [len(s) for s in shards] == [4, 4, 4]
    flat = [i for s in shards for i in s]
    assert set(flat) == set(range(10)) and len(flat) == 12  # 2 indices repeated to pad


def test_sharded_loaders_have_equal_batch_counts():
    lengths = [len(DictDataLoader(_dataset(), batch_size=2, num_replicas=4, rank=r)) for r in range(4)]
    assert lengths == [2, 2, 2, 2]


def test_custom_sampler_cannot_be_combined_with_shuffle():
    with pytest.raises(ValueError, match="custom sampler"):
        DictDataLoader(_dataset(), sampler=range(10), shuffle=True)


def test_invalid_rank_is_rejected():
    with pytest.raises(ValueError, match="rank"):
        DictDataLoader(_dataset(), num_replicas=2, rank=2)


def test_move_to_device_recurses_and_keeps_other_values():
    moved = move_to_device({"a": [torch.zeros(1), ("s", torch.ones(1))], "b": 3}, "meta")
    assert moved["a"][0].device.type == "meta" and moved["a"][1][1].device.type == "meta"
    assert moved["a"][1][0] == "s" and moved["b"] == 3


def _mixed_dataset(n=11):
    """Equal-shape, string, ragged-input and ragged-label fields."""
    torch.manual_seed(0)
    return DictDataset(
        "mixed",
        "train",
        {
            "x": torch.randn(n, 3),
            "ids": [f"id{i}" for i in range(n)],
            "tok": [torch.arange(i % 4 + 1) for i in range(n)],
        },
        {"t": torch.randint(0, 2, (n,)), "tags": [torch.arange(i % 3 + 1) for i in range(n)]},
    )


def _assert_same_batch(a, b):
    for got, expected in zip(a, b):
        assert got.keys() == expected.keys()
        for key, value in got.items():
            if isinstance(value, torch.Tensor):
                assert value.dtype == expected[key].dtype and torch.equal(value, expected[key]), key
            else:
                assert value == expected[key], key


@pytest.mark.parametrize("shuffle", [False, True])
def test_loader_gathers_whole_batches_and_gives_what_per_example_collation_gives(shuffle, monkeypatch):
    import mtlkit.data.dataset as dataset_module

    dataset = _mixed_dataset()
    gathered = []
    gather = dataset_module._gather
    monkeypatch.setattr(dataset_module, "_gather", lambda *a: gathered.append(1) or gather(*a))
    loader = DictDataLoader(dataset, batch_size=4, shuffle=shuffle, seed=3)
    order = [i for batch in loader.batch_sampler for i in batch]
    loader.set_epoch(0)  # the same pass again
    batches = list(loader)
    assert len(gathered) == 2 * len(batches) == 2 * 3  # X and Y of every batch, no per-example fetch
    for k, batch in enumerate(batches):
        expected = collate_dicts([dataset[i] for i in order[4 * k : 4 * k + 4]])
        _assert_same_batch(batch, expected)


def test_own_collate_fn_gets_the_list_of_example_pairs():
    dataset = _mixed_dataset()
    received = []
    next(iter(DictDataLoader(dataset, batch_size=3, collate_fn=lambda batch: received.append(batch) or 0)))
    assert type(received[0]) is list and len(received[0]) == 3
    assert all(type(pair) is tuple for pair in received[0])
    _assert_same_batch(received[0][1], dataset[1])


def test_subclass_with_its_own_getitem_is_fetched_example_by_example():
    class Doubled(DictDataset):
        def __getitem__(self, index):
            x, y = super().__getitem__(index)
            return {**x, "x": 2 * x["x"]}, y

    dataset = Doubled("d", "train", {"x": torch.arange(4.0)}, {"t": torch.arange(4)})
    (X, Y) = next(iter(DictDataLoader(dataset, batch_size=4)))
    assert X["x"].tolist() == [0.0, 2.0, 4.0, 6.0] and Y["t"].tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("shuffle", [False, True])
def test_direct_iteration_gives_torchs_batches_and_leaves_the_random_stream_as_torch_does(shuffle):
    from torch.utils.data import DataLoader

    loader = DictDataLoader(_mixed_dataset(), batch_size=4, shuffle=shuffle, seed=3)
    runs = []
    for iterate in (DictDataLoader.__iter__, DataLoader.__iter__):  # mtlkit's direct path, torch's iterator
        loader.set_epoch(0)
        torch.manual_seed(0)
        iterator = iterate(loader)
        runs.append((list(iterator), torch.rand(3)))
    assert not isinstance(DictDataLoader.__iter__(loader), type(DataLoader.__iter__(loader)))  # two paths indeed
    (ours, after_ours), (torchs, after_torchs) = runs
    assert len(ours) == len(torchs) == 3
    for a, b in zip(ours, torchs):
        _assert_same_batch(a, b)
    assert torch.equal(after_ours, after_torchs)  # torch draws a base seed per iterator: so does the direct path


def test_worker_processes_keep_torchs_iterator():
    from torch.utils.data.dataloader import _BaseDataLoaderIter

    iterator = iter(DictDataLoader(_dataset(), batch_size=4, num_workers=1))
    assert isinstance(iterator, _BaseDataLoaderIter)
    assert [len(Y["t"]) for _, Y in iterator] == [4, 4, 2]


@pytest.mark.parametrize("shuffle", [False, True])
def test_sharded_order_wraps_around_as_torchs_distributed_sampler(shuffle):
    from torch.utils.data import DistributedSampler

    from mtlkit.data.seeding import generator

    n, replicas = 10, 4
    whole = torch.randperm(n, generator=generator(5, 2, 0)).tolist() if shuffle else list(range(n))
    padded = whole + whole[: 12 - n]  # DistributedSampler's padding: the first indices again
    for rank in range(replicas):
        sampler = EpochSampler(n, shuffle=shuffle, seed=5, num_replicas=replicas, rank=rank)
        sampler.set_epoch(2)
        order = sampler.order()
        assert order.dtype == torch.int64 and order.tolist() == padded[rank::replicas]
        if not shuffle:  # torch's own sampler, which shuffles with another generator
            assert order.tolist() == list(DistributedSampler(range(n), replicas, rank, shuffle=False))


@pytest.mark.parametrize("drop_last", [False, True])
def test_direct_iteration_of_a_shard_gives_torchs_batches(drop_last):
    from torch.utils.data import DataLoader

    loader = DictDataLoader(
        _mixed_dataset(), batch_size=4, shuffle=True, seed=1, num_replicas=2, rank=1, drop_last=drop_last
    )
    loader.set_epoch(3)
    ours = list(DictDataLoader.__iter__(loader))
    loader.set_epoch(3)
    torchs = list(DataLoader.__iter__(loader))
    assert len(ours) == len(torchs) == (1 if drop_last else 2)  # 6 rows on each rank: one batch of 4, then 2
    for a, b in zip(ours, torchs):
        _assert_same_batch(a, b)


@pytest.mark.parametrize(
    ("n", "drop_last", "sizes"), [(3, True, []), (3, False, [3]), (0, False, []), (9, True, [4, 4])]
)
def test_direct_iteration_gives_the_batch_samplers_batch_sizes(n, drop_last, sizes):
    dataset = DictDataset("d", "train", {"x": torch.arange(float(n))}, {"t": torch.arange(n)})
    loader = DictDataLoader(dataset, batch_size=4, shuffle=True, seed=0, drop_last=drop_last)
    assert [len(Y["t"]) for _, Y in loader] == sizes == [len(batch) for batch in loader.batch_sampler]
