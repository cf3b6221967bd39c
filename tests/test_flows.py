"""Operation, Task and MultitaskClassifier (Snorkel's front door)."""

from __future__ import annotations

import pickle
import warnings

import networkx as nx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mtlkit import DictDataLoader, DictDataset, MultitaskClassifier, Operation, Scorer, SpecError, Task
from mtlkit.protocol import MultiTaskModel, StepOutput


class Counting(nn.Module):
    """Wraps a module and counts its calls."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls = 0

    def forward(self, *args):
        self.calls += 1
        return self.inner(*args)


def two_tasks(field_a: str = "x", field_b: str = "x") -> tuple[Task, Task, nn.Module]:
    """Tasks a and b sharing a trunk (op 'trunk'), each with a 3-class linear head."""
    torch.manual_seed(0)
    trunk = Counting(nn.Sequential(nn.Linear(4, 5), nn.ReLU()))
    task_a = Task(
        "a",
        nn.ModuleDict({"trunk": trunk, "head_a": Counting(nn.Linear(5, 3))}),
        [Operation("trunk", [("_input_", field_a)]), Operation("head_a", ["trunk"])],
    )
    task_b = Task(
        "b",
        {"trunk": trunk, "head_b": Counting(nn.Linear(5, 3))},
        [Operation("trunk", [("_input_", field_b)]), Operation("head_b", ["trunk"])],
    )
    return task_a, task_b, trunk


def loader(name: str, split: str, X: dict, Y: dict, batch_size: int = 4) -> DictDataLoader:
    return DictDataLoader(DictDataset(name, split, X, Y), batch_size=batch_size)


# --- Operation / Task ----------------------------------------------------------------------


def test_operation_name_defaults_to_module_name():
    op = Operation("encoder", [("_input_", "x")])
    assert op.name == "encoder"
    assert Operation("encoder", ["other"], name="enc2").name == "enc2"


@pytest.mark.parametrize("inputs", [[], "trunk", ("_input_", "x"), [("_input_",)], [3], [("_input_", 1.5)]])
def test_operation_rejects_malformed_inputs(inputs):
    with pytest.raises(SpecError, match="operation 'm'"):
        Operation("m", inputs)


def test_task_defaults_are_cross_entropy_softmax_and_accuracy():
    task = Task("t", {"lin": nn.Linear(2, 3)}, [Operation("lin", [("_input_", "x")])])
    logits = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    Y = torch.tensor([1, 2])
    expected_loss = -(logits.log_softmax(dim=1)[torch.arange(2), Y]).mean()
    torch.testing.assert_close(task.loss_func(logits, Y), expected_loss)
    expected_probs = logits.exp() / logits.exp().sum(dim=1, keepdim=True)
    torch.testing.assert_close(task.output_func(logits), expected_probs)
    assert task.scorer.metrics == ["accuracy"]
    assert task.head == "lin"


def test_task_rejects_op_on_module_outside_its_pool():
    with pytest.raises(SpecError, match="'head'.*not in the task's module_pool"):
        Task("t", {"trunk": nn.Linear(2, 2)}, [Operation("trunk", [("_input_", "x")]), Operation("head", ["trunk"])])


def test_task_rejects_reading_an_op_that_is_not_earlier():
    pool = {"trunk": nn.Linear(2, 2), "head": nn.Linear(2, 2)}
    with pytest.raises(SpecError, match="reads 'trunk', which is not an earlier operation"):
        Task("t", pool, [Operation("head", ["trunk"]), Operation("trunk", [("_input_", "x")])])


def test_task_rejects_duplicate_op_names():
    pool = {"lin": nn.Linear(2, 2)}
    with pytest.raises(SpecError, match="'lin' appears twice"):
        Task("t", pool, [Operation("lin", [("_input_", "x")]), Operation("lin", ["lin"])])


# --- building the model --------------------------------------------------------------------


def test_modules_are_shared_by_name_in_one_pool():
    task_a, task_b, trunk = two_tasks()
    model = MultitaskClassifier([task_a, task_b])
    assert list(model.module_pool) == ["trunk", "head_a", "head_b"]
    assert model.module_pool["trunk"] is trunk
    assert model.task_names == ["a", "b"]
    assert isinstance(model, MultiTaskModel)


def test_a_different_module_under_a_taken_name_is_shared_by_name_with_a_warning():
    task_a, _, _ = two_tasks()
    other = nn.Linear(4, 5)
    late = Task("c", {"trunk": other}, [Operation("trunk", [("_input_", "x")])])
    model = MultitaskClassifier([task_a])
    with pytest.warns(UserWarning, match="task 'c' brings different module objects.*'trunk' \\(from task 'a'\\)"):
        model.add_task(late)
    assert model.task_names == ["a", "c"] and model.module_pool["trunk"] is task_a.module_pool["trunk"]
    x = torch.randn(3, 4)
    out = model.task_outputs({"x": x}, ["c"])["c"]  # task c runs task a's trunk, not its own
    assert torch.allclose(out, torch.softmax(task_a.module_pool["trunk"](x), dim=1))


def test_duplicate_task_name_is_an_error():
    task_a, _, _ = two_tasks()
    with pytest.raises(SpecError, match="Found duplicate task 'a': it is already in model"):
        MultitaskClassifier([task_a, task_a])


def test_graph_holds_every_operation_and_the_input():
    task_a, task_b, _ = two_tasks()
    model = MultitaskClassifier([task_a, task_b])
    assert set(model.g.nodes) == {"_input_", "trunk", "head_a", "head_b"}
    assert set(model.g.edges) == {("_input_", "trunk"), ("trunk", "head_a"), ("trunk", "head_b")}
    assert isinstance(model.g, nx.DiGraph)


def test_add_task_extends_pool_graph_and_shared_parameters():
    task_a, task_b, trunk = two_tasks()
    model = MultitaskClassifier([task_a])
    assert model.shared_parameters() == []
    model.add_task(task_b)
    assert len(model.tasks) == 2 and "head_b" in model.g
    assert {id(p) for p in model.shared_parameters()} == {id(p) for p in trunk.parameters()}


# --- forward -------------------------------------------------------------------------------


def test_forward_runs_only_the_requested_tasks_and_shared_ops_once():
    task_a, task_b, trunk = two_tasks()
    model = MultitaskClassifier([task_a, task_b])
    X = {"x": torch.randn(6, 4)}
    out = model(X, ["a"])
    assert set(out) == {"_input_", "trunk", "head_a"}
    assert (trunk.calls, model.module_pool["head_b"].calls) == (1, 0)
    model(X, ["a", "b"])
    assert (trunk.calls, model.module_pool["head_a"].calls, model.module_pool["head_b"].calls) == (2, 2, 1)


def test_same_op_name_on_different_inputs_becomes_one_node_per_task():
    # Snorkel's tutorial: op 'trunk' reads 'x_a' in task a and 'x_b' in task b.
    task_a, task_b, trunk = two_tasks("x_a", "x_b")
    model = MultitaskClassifier([task_a, task_b])
    X = {"x_a": torch.randn(3, 4), "x_b": torch.randn(3, 4)}
    out = model(X, ["a", "b"])
    torch.testing.assert_close(out["head_a"], model.module_pool["head_a"](trunk(X["x_a"])))
    torch.testing.assert_close(out["head_b"], model.module_pool["head_b"](trunk(X["x_b"])))
    assert {"trunk@a", "trunk@b"} <= set(model.g.nodes)
    assert {id(p) for p in model.shared_parameters()} == {id(p) for p in trunk.parameters()}


def test_forward_names_an_unknown_task():
    task_a, _, _ = two_tasks()
    with pytest.raises(KeyError, match="no task 'zz'"):
        MultitaskClassifier([task_a])({"x": torch.randn(2, 4)}, ["zz"])


def test_device_argument_moves_modules_and_batches_follow_them():
    task_a, _, _ = two_tasks()
    model = MultitaskClassifier([task_a], device="meta")
    assert model.module_pool["trunk"].inner[0].weight.device.type == "meta"
    out = model({"x": torch.randn(2, 4)}, ["a"])
    assert out["head_a"].device.type == "meta"


# --- losses --------------------------------------------------------------------------------


def test_calculate_loss_masks_abstain_rows_and_counts_active_ones():
    task_a, task_b, _ = two_tasks()
    model = MultitaskClassifier([task_a, task_b])
    X = {"x": torch.randn(5, 4)}
    Y = {"a": torch.tensor([0, -1, 2, 1, -1]), "b": torch.tensor([2, 2, -1, 0, 1])}
    losses, counts = model.calculate_loss(X, Y)
    assert counts == {"a": 3, "b": 4}
    logits_a = model(X, ["a"])["head_a"]
    keep = torch.tensor([0, 2, 3])
    expected_a = -logits_a.log_softmax(1)[keep, Y["a"][keep]].mean()
    torch.testing.assert_close(losses["a"], expected_a)


def test_task_without_labelled_rows_is_left_out_and_its_head_not_run():
    task_a, task_b, _ = two_tasks()
    model = MultitaskClassifier([task_a, task_b])
    losses, counts = model.calculate_loss(
        {"x": torch.randn(3, 4)}, {"a": torch.tensor([1, 0, 2]), "b": torch.full((3,), -1)}
    )
    assert set(losses) == set(counts) == {"a"}
    assert model.module_pool["head_b"].calls == 0


def test_probabilistic_labels_mask_rows_of_all_minus_one():
    task_a, _, _ = two_tasks()
    model = MultitaskClassifier([task_a])
    X = {"x": torch.randn(3, 4)}
    Y = torch.tensor([[0.2, 0.5, 0.3], [-1.0, -1.0, -1.0], [0.0, 0.0, 1.0]])
    losses, counts = model.calculate_loss(X, {"a": Y})
    assert counts == {"a": 2}
    log_p = model(X, ["a"])["head_a"].log_softmax(1)
    expected = -(Y[[0, 2]] * log_p[[0, 2]]).sum(1).mean()
    torch.testing.assert_close(losses["a"], expected)


def test_label_without_a_task_is_an_error_naming_it():
    task_a, _, _ = two_tasks()
    with pytest.raises(ValueError, match="'typo_task'"):
        MultitaskClassifier([task_a]).calculate_loss({"x": torch.randn(2, 4)}, {"typo_task": torch.tensor([0, 1])})


def test_training_step_returns_calculate_loss_as_step_output():
    task_a, task_b, _ = two_tasks()
    model = MultitaskClassifier([task_a, task_b])
    X, Y = {"x": torch.randn(4, 4)}, {"a": torch.tensor([0, 1, -1, 2])}
    out = model.training_step(X, Y)
    losses, counts = model.calculate_loss(X, Y)
    assert isinstance(out, StepOutput) and out.counts == counts
    torch.testing.assert_close(out.losses["a"], losses["a"])


# --- regression, scoring, prediction --------------------------------------------------------


def regression_task() -> Task:
    torch.manual_seed(1)
    return Task(
        "reg",
        {"lin": nn.Linear(2, 1)},
        [Operation("lin", [("_input_", "x")])],
        scorer=Scorer(metrics=["mse", "mae"], abstain_label=float("nan")),
        loss_func=lambda out, y: F.mse_loss(out.squeeze(1), y),
        output_func=lambda out: out.squeeze(1),
    )


def test_regression_task_uses_its_loss_and_masks_nan_targets():
    model = MultitaskClassifier([regression_task()])
    X = {"x": torch.randn(4, 2)}
    Y = torch.tensor([1.0, float("nan"), -1.0, 0.5])  # -1.0 is a real target here
    losses, counts = model.calculate_loss(X, {"reg": Y})
    pred = model(X, ["reg"])["lin"].squeeze(1)
    keep = torch.tensor([0, 2, 3])
    assert counts == {"reg": 3}
    torch.testing.assert_close(losses["reg"], ((pred[keep] - Y[keep]) ** 2).mean())


def test_regression_task_scores_values_not_argmax():
    model = MultitaskClassifier([regression_task()])
    X, Y = torch.randn(10, 2), torch.randn(10)
    dl = loader("regData", "test", {"x": X}, {"reg": Y})
    pred = model({"x": X}, ["reg"])["lin"].squeeze(1).detach()
    scores = model.score([dl])
    assert scores["reg/regData/test/mse"] == pytest.approx(((pred - Y) ** 2).mean().item(), rel=1e-5)
    assert scores["reg/regData/test/mae"] == pytest.approx((pred - Y).abs().mean().item(), rel=1e-5)
    torch.testing.assert_close(model.predict(dl, return_preds=True)["preds"]["reg"], pred)


def fixed_three_class_task(scorer: Scorer) -> Task:
    """A task whose logits are the input itself (identity head), so predictions are chosen by the data."""
    return Task("mc", {"id": nn.Identity()}, [Operation("id", [("_input_", "x")])], scorer=scorer)


def test_multiclass_f1_precision_recall_are_macro_averages():
    golds = torch.tensor([0, 0, 1, 1, 2, 2, 2, 1])
    preds = torch.tensor([0, 1, 1, 1, 2, 0, 2, 2])
    X = F.one_hot(preds, 3).float()
    model = MultitaskClassifier([fixed_three_class_task(Scorer(metrics=["precision", "recall", "f1", "accuracy"]))])
    scores = model.score([loader("mcData", "valid", {"x": X}, {"mc": golds})])
    # independent reference: per-class counts by hand
    precision, recall = [], []
    for c in range(3):
        tp = ((preds == c) & (golds == c)).sum().item()
        precision.append(tp / (preds == c).sum().item())
        recall.append(tp / (golds == c).sum().item())
    f1 = [2 * p * r / (p + r) if p + r else 0.0 for p, r in zip(precision, recall)]
    assert scores["mc/mcData/valid/precision"] == pytest.approx(sum(precision) / 3)
    assert scores["mc/mcData/valid/recall"] == pytest.approx(sum(recall) / 3)
    assert scores["mc/mcData/valid/f1"] == pytest.approx(sum(f1) / 3)
    assert scores["mc/mcData/valid/accuracy"] == pytest.approx(5 / 8)


def test_predict_returns_golds_probs_and_argmax_preds():
    golds = torch.tensor([2, 0, 1])
    X = torch.tensor([[0.0, 0.0, 5.0], [1.0, 0.0, 0.0], [0.0, 3.0, 0.0]])
    model = MultitaskClassifier([fixed_three_class_task(Scorer(metrics=["accuracy"]))])
    results = model.predict(loader("d", "test", {"x": X}, {"mc": golds}), return_preds=True)
    torch.testing.assert_close(results["golds"]["mc"], golds)
    torch.testing.assert_close(results["probs"]["mc"], X.softmax(dim=1))
    torch.testing.assert_close(results["preds"]["mc"], torch.tensor([2, 0, 1]))


def test_score_keys_and_remap_labels():
    task_a, task_b, _ = two_tasks()
    model = MultitaskClassifier([task_a, task_b])
    X, Y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    dl = loader("dsA", "valid", {"x": X}, {"a": Y, "other_label": Y})
    assert set(model.score([dl])) == {"a/dsA/valid/accuracy"}
    remapped = model.score([dl], remap_labels={"other_label": "b", "a": None})
    assert set(remapped) == {"other_label/dsA/valid/accuracy"}
    expected = (model({"x": X}, ["b"])["head_b"].argmax(1) == Y).float().mean().item()
    assert remapped["other_label/dsA/valid/accuracy"] == pytest.approx(expected)


# --- persistence ---------------------------------------------------------------------------


def test_save_then_load_restores_outputs(tmp_path):
    task_a, task_b, _ = two_tasks()
    model = MultitaskClassifier([task_a, task_b])
    path = tmp_path / "nested" / "model.pt"
    model.save(path)
    other_a, other_b, _ = two_tasks()
    other = MultitaskClassifier([other_a, other_b])
    with torch.no_grad():
        for p in other.parameters():
            p.add_(1.0)
    other.load(path)
    X = {"x": torch.randn(3, 4)}
    torch.testing.assert_close(other(X, ["a", "b"])["head_b"], model(X, ["a", "b"])["head_b"])


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_load_refuses_files_that_would_run_code(tmp_path):
    task_a, _, _ = two_tasks()
    path = tmp_path / "evil.pt"
    torch.save({"x": _Payload()}, path)
    with pytest.raises(pickle.UnpicklingError):
        MultitaskClassifier([task_a]).load(path)


# --- the rest of the library sees it as any other model ------------------------------------


def test_draw_graph_draws_the_compiled_operations(tmp_path):
    pytest.importorskip("matplotlib")
    from mtlkit.viz import draw_graph

    task_a, task_b, _ = two_tasks("x_a", "x_b")
    draw_graph(MultitaskClassifier([task_a, task_b]), tmp_path / "graph.png")
    assert (tmp_path / "graph.png").stat().st_size > 0


def test_trainer_with_a_gradient_balancer_trains_trunk_and_heads():
    from mtlkit import Trainer

    task_a, task_b, trunk = two_tasks()
    model = MultitaskClassifier([task_a, task_b])
    X = torch.randn(32, 4)
    Y_b = torch.randint(0, 3, (32,))
    Y_b[:10] = -1
    loaders = [
        loader("both", "train", {"x": X}, {"a": torch.randint(0, 3, (32,)), "b": Y_b}, batch_size=8),
        loader("only_a", "train", {"x": X}, {"a": torch.randint(0, 3, (32,))}, batch_size=8),
    ]
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    Trainer(n_epochs=1, lr=0.01, progress_bar=False, weighting="pcgrad", seed=0).fit(model, loaders)
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed == set(before)


def test_op_sequences_maps_each_task_to_its_operations():
    task_a, task_b, _ = two_tasks()
    model = MultitaskClassifier([task_a, task_b])
    assert {name: [op.name for op in ops] for name, ops in model.op_sequences.items()} == {
        "a": ["trunk", "head_a"],
        "b": ["trunk", "head_b"],
    }


def test_dataparallel_is_accepted_and_never_wraps():
    task_a, _, trunk = two_tasks()
    with pytest.warns(UserWarning, match="never wraps modules in nn.DataParallel"):
        model = MultitaskClassifier([task_a], dataparallel=True)
    assert model.module_pool["trunk"] is trunk
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        MultitaskClassifier([task_a], dataparallel=False)


def test_a_task_edited_after_creation_is_checked_when_added():
    task_a, _, _ = two_tasks()
    task_a.op_sequence[0].inputs[0] = (0, 0)
    with pytest.raises(SpecError, match="task 'a': operation 'trunk' reads 0"):
        MultitaskClassifier([task_a])
    with pytest.raises(SpecError, match="Unrecognized task type.*got dict"):
        MultitaskClassifier([{"fake": 1}])


def test_device_minus_one_is_the_cpu_as_in_snorkel():
    task_a, _, _ = two_tasks()
    model = MultitaskClassifier([task_a], device=-1)
    assert {p.device.type for p in model.parameters()} == {"cpu"}
