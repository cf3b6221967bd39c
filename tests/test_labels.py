"""One label convention for every front door: class -1 and regression NaN mean "no label".

Each front door (Snorkel's `MultitaskClassifier`, torchMTL's `MTLModel`, an architecture)
is built around the same linear head, and its loss, counts and scores are compared with
the same quantities computed by hand on the labelled rows only.
"""

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mtlkit import DictDataLoader, DictDataset, Scorer, Trainer, protocol
from mtlkit.cli import main
from mtlkit.labels import labelled_rows, missing
from mtlkit.metrics import score
from mtlkit.protocol import labelled_batch, labelled_targets, task_loss

sys.path.insert(0, str(Path(__file__).parent))
from front_doors import FRONT_DOORS, PENGUINS_GRAPH, architecture, flows


def _head(out_features):
    torch.manual_seed(0)
    return nn.Linear(3, out_features)


def _x(n=8):
    return torch.randn(n, 3, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("front_door", FRONT_DOORS)
def test_class_label_minus_one_is_left_out_of_loss_and_counts(front_door):
    head, x = _head(3), _x()
    y = torch.tensor([0, -1, 2, 1, -1, 0, 2, -1])
    model = front_door(head, F.cross_entropy, Scorer(["accuracy"]))
    out = model.training_step({"x": x}, {"a": y})
    keep = y != -1
    assert out.counts == {"a": 5}
    assert out.losses["a"].item() == pytest.approx(F.cross_entropy(head(x[keep]), y[keep]).item())


@pytest.mark.parametrize("front_door", FRONT_DOORS)
def test_regression_nan_is_left_out_and_minus_one_is_a_value(front_door):
    head, x = _head(1), _x()
    y = torch.tensor([0.5, float("nan"), -1.0, 2.0, -1.0, float("nan"), 0.0, 1.0])
    model = front_door(head, F.mse_loss, Scorer(["mse"]))
    out = model.training_step({"x": x}, {"a": y})
    keep = ~torch.isnan(y)
    assert out.counts == {"a": 6}  # both -1.0 targets are values
    expected = ((head(x[keep]).squeeze(1) - y[keep]) ** 2).mean()
    assert out.losses["a"].item() == pytest.approx(expected.item())


@pytest.mark.parametrize("front_door", FRONT_DOORS)
def test_a_task_without_a_labelled_row_is_absent_from_losses_and_counts(front_door):
    model = front_door(_head(2), F.cross_entropy, Scorer(["accuracy"]))
    out = model.training_step({"x": _x(4)}, {"a": torch.full((4,), -1)})
    assert out.losses == {} and out.counts == {}


@pytest.mark.parametrize("front_door", FRONT_DOORS)
def test_metrics_leave_out_the_same_rows(front_door):
    head, x = _head(1), _x(16)
    y = head(x).detach().squeeze(1) + torch.linspace(-1, 1, 16)
    y[::4] = float("nan")
    y[1] = -1.0
    model = front_door(head, F.mse_loss, Scorer(["mse"]))
    loader = DictDataLoader(DictDataset("ds", "valid", {"x": x}, {"a": y}), batch_size=5)
    keep = ~torch.isnan(y)
    expected = ((head(x[keep]).squeeze(1) - y[keep]) ** 2).mean().item()
    assert score(model, [loader])["a/ds/valid/mse"] == pytest.approx(expected, rel=1e-5)


def test_the_marker_is_configurable_through_the_task_scorer():
    head, x = _head(2), _x()
    y = torch.tensor([0, 9, 1, 9, 1, 0, 1, 0])
    scorer = Scorer(["accuracy"], abstain_label=9)
    for front_door in (flows, architecture):
        out = front_door(head, F.cross_entropy, scorer).training_step({"x": x}, {"a": y})
        keep = y != 9
        assert out.counts == {"a": 6}
        assert out.losses["a"].item() == pytest.approx(F.cross_entropy(head(x[keep]), y[keep]).item())


def test_the_default_regression_scorer_keeps_minus_one_targets():
    golds = torch.tensor([-1.0, 0.0, 1.0, 2.0, -1.0, float("nan")])
    preds = torch.tensor([0.0, 0.0, 1.0, 2.0, -1.0, 5.0])
    assert Scorer(["mse"]).abstain_label != Scorer(["mse"]).abstain_label  # NaN
    assert Scorer(["mse", "mae"]).score(golds, preds) == pytest.approx({"mse": 1 / 5, "mae": 1 / 5})
    assert Scorer(["mse"], abstain_label=-1).score(golds[:5], preds[:5])["mse"] == 0.0  # an explicit -1 still drops


def test_classification_scorer_keeps_snorkels_minus_one():
    assert Scorer(["accuracy"]).abstain_label == -1
    assert Scorer(["accuracy"]).score([1, 0, 1, 0, -1], [1, 0, 1, 1, 0])["accuracy"] == 0.75


def test_a_scorer_with_only_custom_metrics_follows_the_golds_dtype():
    def n_rows(golds, preds, probs):
        return len(golds)

    scorer = Scorer(custom_metric_funcs={"n": n_rows})
    assert scorer.score(torch.tensor([0, -1, 1]), torch.tensor([0, 0, 1]))["n"] == 2
    assert scorer.score(torch.tensor([0.0, -1.0, float("nan")]), torch.tensor([0.0, 0.0, 1.0]))["n"] == 2


def test_a_row_of_a_two_d_target_is_unlabelled_only_when_every_entry_is_missing():
    y = torch.tensor([[1.0, float("nan")], [float("nan"), float("nan")], [0.0, 1.0]])
    assert labelled_rows(y).tolist() == [True, False, True]
    assert missing(torch.tensor([-1, 0, 3])).tolist() == [True, False, False]
    assert missing(torch.tensor([-1, 0]), None).tolist() == [False, False]


def test_task_loss_names_the_task_when_a_non_tensor_output_must_be_masked():
    targets = labelled_targets("a", torch.tensor([0, -1]))
    with pytest.raises(ValueError, match="task 'a'.*cannot be masked"):
        task_loss("a", lambda out, y: out[0].sum(), (torch.zeros(2, 2),), targets)


def test_custom_losses_get_the_shapes_as_they_are():
    targets = labelled_targets("a", torch.tensor([1.0, 2.0]))
    shapes = []
    task_loss(
        "a", lambda out, y: shapes.append((tuple(out.shape), tuple(y.shape))) or out.sum(), torch.zeros(2, 1), targets
    )
    assert shapes == [((2, 1), (2,))]


@pytest.mark.parametrize("front_door", FRONT_DOORS)
def test_the_trainer_trains_each_front_door_on_partly_labelled_data(front_door):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, generator=g)
    y = (x[:, 0] > 0).long()
    y[::3] = -1
    loaders = [
        DictDataLoader(DictDataset("ds", split, {"x": x}, {"a": y}), batch_size=16) for split in ("train", "valid")
    ]
    model = front_door(_head(2), F.cross_entropy, Scorer(["accuracy"]))
    final = Trainer(n_epochs=20, lr=0.1, progress_bar=False).fit(model, loaders)
    assert final["a/ds/valid/accuracy"] > 0.9


def test_a_yaml_graph_trains_on_penguins_whose_sex_labels_are_partly_missing(tmp_path, capsys):
    path = tmp_path / "graph.yaml"
    path.write_text(PENGUINS_GRAPH.replace("SPECIES", "3"))
    assert main(["train", str(path), "--run-dir", str(tmp_path / "run"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "| sex | penguins | accuracy |" in out and "| body_mass | penguins | mae |" in out


NAN, INF = float("nan"), float("inf")
BATCH_CASES = [  # (targets, marker)
    (torch.tensor([0, 1, 2]), "auto"),
    (torch.tensor([0, -1, 2]), "auto"),
    (torch.tensor([-1, -1]), "auto"),
    (torch.tensor([-3, 1]), "auto"),  # below the marker but not it: labelled
    (torch.tensor([0.5, 1.5]), "auto"),
    (torch.tensor([0.5, NAN]), "auto"),
    (torch.tensor([INF, -INF, 1.0]), "auto"),  # the sum is NaN, no entry is: a false alarm, counted exactly
    (torch.tensor([[1.0, NAN], [NAN, NAN], [0.0, 1.0]]), "auto"),
    (torch.tensor([[0, 1], [-1, -1]]), "auto"),
    (torch.tensor([-1.0, 2.0]), -1),  # float targets, numeric marker
    (torch.tensor([NAN, 2.0]), -1),  # NaN is a value under a numeric marker
    (torch.tensor([3, 99, 4]), 99),  # a marker above the labels
    (torch.tensor([3, 4]), 99),
    (torch.tensor([True, False]), 0),
    (torch.tensor([0, -1]), None),
    (torch.tensor([], dtype=torch.long), "auto"),
    (torch.tensor([], dtype=torch.long), None),
    (torch.tensor([1, 2], dtype=torch.int8), "auto"),
    (torch.tensor([0.1, 0.2]), 0.1),  # a marker not exact in float32: compared in the target's dtype
    (torch.tensor([2, 255], dtype=torch.uint8), 255),
    (torch.tensor([5, 7], dtype=torch.int32), 7),
    (torch.tensor([2**62, 5]), 2**62),  # int64 targets: the minimum compared in Python, exactly
    (torch.tensor([2**62 + 1, 2**62 + 2]), 2**62),
]


@pytest.mark.parametrize(("target", "marker"), BATCH_CASES)
def test_labelled_batch_finds_the_rows_the_convention_defines(target, marker):
    expected = labelled_rows(target, marker) if len(target) else torch.zeros(0, dtype=torch.bool)
    got = labelled_batch({"t": target}, {"t": marker}).get("t")
    if marker is not None and not bool(expected.any()):
        assert got is None  # no labelled row: the task is left out
        return
    assert got is not None and got.count == int(expected.sum()) and got.marker == marker
    assert got.target is target
    if got.rows is None:
        assert bool(expected.all())
    else:
        assert torch.equal(got.rows, expected)


def test_a_fully_labelled_batch_costs_one_read_and_no_row_mask(monkeypatch):
    reads = []
    real = protocol.host_values
    monkeypatch.setattr(protocol, "host_values", lambda tensors: reads.append(len(tensors)) or real(tensors))
    monkeypatch.setattr(protocol, "unlabelled_rows", lambda *a: pytest.fail("no row mask is needed"))
    targets = {"a": torch.tensor([0, 1]), "b": torch.tensor([0.5, 2.0]), "c": torch.tensor([[1.0, 0.0], [0.0, 1.0]])}
    got = labelled_batch(targets, {})
    assert reads == [3]  # one read for the three tasks
    assert {task: (labels.rows, labels.count) for task, labels in got.items()} == {t: (None, 2) for t in targets}


def test_labelled_batch_names_a_task_whose_targets_are_not_a_tensor():
    with pytest.raises(TypeError, match="task 'b': targets must be a tensor, got list"):
        labelled_batch({"a": torch.tensor([0]), "b": [0, 1]}, {})
