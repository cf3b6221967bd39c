import hashlib

import numpy as np
import pytest
import sklearn.metrics as skm
import torch
from torch import nn

from mtlkit.data import DictDataLoader, DictDataset
from mtlkit.metrics import METRICS, Scorer, delta_m, labels_to_tasks, metric_score, predict, score
from mtlkit.utils import preds_to_probs

CLASSIFICATION = [
    "accuracy",
    "precision",
    "recall",
    "f1",
    "fbeta",
    "f1_micro",
    "f1_macro",
    "matthews_corrcoef",
    "roc_auc",
]
# roc_auc is torchmetrics' AUROC: it ranks float64 scores, but accumulates the curve in float32
ROC_AUC_TOL = 1e-6


def _random_classification(n, num_classes, seed):
    g = torch.Generator().manual_seed(seed)
    golds = torch.randint(0, num_classes, (n,), generator=g)
    probs = torch.softmax(
        torch.randn(n, num_classes, generator=g) + 1.5 * nn.functional.one_hot(golds, num_classes), dim=1
    )
    return golds, probs.argmax(1), probs


def test_binary_metrics_match_sklearn():
    golds, preds, probs = _random_classification(200, 2, seed=0)
    got = Scorer(CLASSIFICATION, beta=0.5).score(golds, preds, probs)
    y, p = golds.numpy(), preds.numpy()
    expected = {
        "accuracy": skm.accuracy_score(y, p),
        "precision": skm.precision_score(y, p),
        "recall": skm.recall_score(y, p),
        "f1": skm.f1_score(y, p),
        "fbeta": skm.fbeta_score(y, p, beta=0.5),
        "f1_micro": skm.f1_score(y, p, average="micro"),
        "f1_macro": skm.f1_score(y, p, average="macro"),
        "matthews_corrcoef": skm.matthews_corrcoef(y, p),
    }
    assert got.pop("roc_auc") == pytest.approx(skm.roc_auc_score(y, probs[:, 1].numpy()), abs=ROC_AUC_TOL)
    assert got == pytest.approx(expected, abs=1e-12)


def test_multiclass_metrics_match_sklearn_macro_averages():
    golds, preds, probs = _random_classification(300, 4, seed=1)
    got = Scorer(CLASSIFICATION, beta=2.0).score(golds, preds, probs)
    y, p = golds.numpy(), preds.numpy()
    expected = {
        "accuracy": skm.accuracy_score(y, p),
        "precision": skm.precision_score(y, p, average="macro"),
        "recall": skm.recall_score(y, p, average="macro"),
        "f1": skm.f1_score(y, p, average="macro"),
        "fbeta": skm.fbeta_score(y, p, beta=2.0, average="macro"),
        "f1_micro": skm.f1_score(y, p, average="micro"),
        "f1_macro": skm.f1_score(y, p, average="macro"),
        "matthews_corrcoef": skm.matthews_corrcoef(y, p),
    }
    roc_auc = skm.roc_auc_score(y, probs.double().numpy(), multi_class="ovr", average="macro")
    assert got.pop("roc_auc") == pytest.approx(roc_auc, abs=ROC_AUC_TOL)
    assert got == pytest.approx(expected, abs=1e-12)


def test_multiclass_macro_ignores_classes_absent_from_golds_and_preds_like_sklearn():
    golds, preds = torch.tensor([0, 0, 1, 3, 3]), torch.tensor([0, 1, 1, 3, 0])
    got = Scorer(["precision", "recall", "f1"]).score(golds, preds)
    for name, func in (("precision", skm.precision_score), ("recall", skm.recall_score), ("f1", skm.f1_score)):
        assert got[name] == pytest.approx(func(golds.numpy(), preds.numpy(), average="macro"), abs=1e-6)


def test_regression_metrics_match_sklearn_including_multi_output():
    g = torch.Generator().manual_seed(2)
    golds, preds = torch.randn(50, generator=g), torch.randn(50, 1, generator=g)
    scorer = Scorer(["mse", "mae", "r2"])
    assert scorer.is_regression
    got = scorer.score(golds, preds)
    y, p = golds.numpy(), preds[:, 0].numpy()
    assert got == pytest.approx(
        {"mse": skm.mean_squared_error(y, p), "mae": skm.mean_absolute_error(y, p), "r2": skm.r2_score(y, p)}, abs=1e-5
    )
    golds2, preds2 = torch.randn(40, 3, generator=g), torch.randn(40, 3, generator=g)
    assert scorer.score(golds2, preds2)["r2"] == pytest.approx(skm.r2_score(golds2.numpy(), preds2.numpy()), abs=1e-5)


def test_gold_abstains_are_dropped_and_coverage_counts_answered_rows_of_all_rows():
    golds = [1, 0, 1, 0, -1]
    assert Scorer(["accuracy"]).score(golds, [1, 0, 1, 1, 0])["accuracy"] == 0.75  # 3 of the 4 labelled rows
    got = Scorer(["accuracy", "coverage"]).score(golds, [-1, -1, 1, 1, 0])
    # accuracy on rows labelled and answered (rows 2, 3): 1 of 2; coverage: 3 answers among 5 rows
    assert got == {"accuracy": 0.5, "coverage": 0.6}


def test_without_an_abstain_label_minus_one_is_an_ordinary_class():
    golds, preds = [1, 0, 1, 0, -1], [1, 0, 1, 1, 0]
    assert Scorer(["accuracy"], abstain_label=None).score(golds, preds)["accuracy"] == 0.6  # row 4 is simply wrong
    assert Scorer(["accuracy"], abstain_label=10).score(golds, preds)["accuracy"] == 0.6
    # three classes {-1, 0, 1}: macro f1 over them, as scikit-learn computes it
    assert Scorer(["f1"], abstain_label=None).score(golds, preds)["f1"] == pytest.approx(
        skm.f1_score(golds, preds, average="macro"), abs=1e-15
    )


def test_abstain_rows_match_sklearn_on_the_kept_rows():
    golds, preds, probs = _random_classification(100, 3, seed=3)
    golds[::7] = -1
    got = Scorer(["f1_macro", "roc_auc"]).score(golds, preds, probs)
    keep = golds != -1
    y, p = golds[keep].numpy(), preds[keep].numpy()
    assert got["f1_macro"] == pytest.approx(skm.f1_score(y, p, average="macro"), abs=1e-5)
    assert got["roc_auc"] == pytest.approx(
        skm.roc_auc_score(y, probs[keep].double().numpy(), multi_class="ovr"), abs=1e-5
    )


def test_nan_abstain_drops_missing_regression_targets():
    golds, preds = torch.tensor([1.0, float("nan"), 3.0]), torch.tensor([2.0, 100.0, 3.0])
    assert Scorer(["mse"], abstain_label=float("nan")).score(golds, preds)["mse"] == pytest.approx(0.5)


def test_preds_default_to_argmax_of_probs_and_numpy_inputs_work():
    golds, preds, probs = _random_classification(30, 3, seed=4)
    scorer = Scorer(["accuracy"])
    assert scorer.score(golds.numpy(), None, probs.numpy()) == scorer.score(golds, preds, probs)


def test_custom_metric_functions_get_numpy_without_gold_abstains_and_return_float_or_dict():
    def pred_sum(golds, preds, probs):
        return np.sum(preds)

    def pair(golds, preds, probs):
        return {"a": 1, "kappa": skm.cohen_kappa_score(golds, preds)}

    got = Scorer(["accuracy"], custom_metric_funcs={"pred_sum": pred_sum, "pair": pair}).score(
        [1, 0, 1, -1], [1, 1, 1, 0]
    )
    kappa = skm.cohen_kappa_score([1, 0, 1], [1, 1, 1])
    assert got == pytest.approx({"accuracy": 2 / 3, "pred_sum": 3.0, "a": 1.0, "kappa": kappa})


def test_custom_metric_returning_a_non_number_is_an_error():
    with pytest.raises(TypeError, match="custom metric 'bad'"):
        Scorer(custom_metric_funcs={"bad": lambda g, p, pr: "x"}).score([0, 1], [0, 1])


def test_unknown_metric_lists_allowed_names():
    with pytest.raises(ValueError, match="Unrecognized metric 'f2'") as info:
        Scorer(["accuracy", "f2"])
    assert all(name in str(info.value) for name in METRICS)


def test_mixing_classification_and_regression_metrics_is_an_error():
    with pytest.raises(ValueError, match="mix classification and regression"):
        Scorer(["accuracy", "mse"])


def test_scoring_errors_name_the_problem():
    with pytest.raises(ValueError, match="Cannot score empty"):
        Scorer(["accuracy"]).score([], [])
    with pytest.raises(ValueError, match="every gold label is the abstain label"):
        Scorer(["accuracy"]).score([-1, -1], [0, 1])
    with pytest.raises(ValueError, match=r"golds hold label 2 but probs have 2 columns"):
        Scorer(["accuracy"]).score([0, 2], None, torch.tensor([[0.5, 0.5], [0.2, 0.8]]))
    with pytest.raises(ValueError, match="1-D class indices"):
        Scorer(["accuracy"]).score(torch.zeros(2, 2), [0, 1])
    with pytest.raises(ValueError, match=r"roc_auc is undefined when gold labels lack classes \[0\]"):
        Scorer(["roc_auc"]).score([1, 1], None, torch.tensor([[0.5, 0.5], [0.2, 0.8]]))
    with pytest.raises(ValueError, match="roc_auc' needs probs"):
        Scorer(["roc_auc"]).score([0, 1], [0, 1])


def test_delta_m_matches_hand_computation():
    results = {"seg": {"accuracy": 0.8, "f1": 0.6}, "depth": {"mse": 0.9}}
    baselines = {"seg": {"accuracy": 0.75, "f1": 0.5}, "depth": {"mse": 1.0}}
    # seg: (+0.05/0.75 + 0.1/0.5)/2 = 0.1333...; depth: -(0.9-1.0)/1.0 = +0.1; mean = 0.11666... -> 11.666...%
    assert delta_m(results, baselines) == pytest.approx(100 * ((0.05 / 0.75 + 0.2) / 2 + 0.1) / 2)
    assert delta_m(results, baselines) == pytest.approx(35 / 3)


def test_delta_m_directions_by_metric_or_by_task():
    results, baselines = {"a": {"err": 2.0}, "b": {"err": 2.0}}, {"a": {"err": 4.0}, "b": {"err": 1.0}}
    assert delta_m(results, baselines, {"err": False}) == pytest.approx(100 * (0.5 - 1.0) / 2)
    assert delta_m(results, baselines, {"a": {"err": False}, "b": {"err": True}}) == pytest.approx(
        100 * (0.5 + 1.0) / 2
    )
    with pytest.raises(ValueError, match="no known direction for metric 'err'"):
        delta_m(results, baselines)
    with pytest.raises(ValueError, match="baseline a/err is 0"):
        delta_m(results, {"a": {"err": 0.0}}, {"err": False})
    with pytest.raises(ValueError, match="results have no task 'c'"):
        delta_m(results, {"c": {"err": 1.0}}, {"err": False})


def test_delta_m_is_zero_at_the_baseline():
    base = {"t": {"accuracy": 0.7, "mae": 0.3}}
    assert delta_m(base, base) == 0.0


# --- scoring loop ---------------------------------------------------------------------


class _TwoTaskModel(nn.Module):
    """A minimal MultiTaskModel: a classifier `cls` (3 classes) and a regressor `reg`."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.heads = nn.ModuleDict({"cls": nn.Linear(2, 3), "reg": nn.Linear(2, 1)})
        self.calls = []

    @property
    def task_names(self):
        return ["cls", "reg"]

    def task_outputs(self, X, task_names):
        self.calls.append((list(task_names), self.training))
        out = {}
        if "cls" in task_names:
            out["cls"] = torch.softmax(self.heads["cls"](X["x"]), dim=1)
        if "reg" in task_names:
            out["reg"] = self.heads["reg"](X["x"])
        return out

    def scorers(self):
        return {"cls": Scorer(["accuracy", "f1_macro"]), "reg": Scorer(["mse"])}


def _loader(name, split, Y, n=12, batch_size=5):
    X = torch.randn(n, 2, generator=torch.Generator().manual_seed(len(name) + len(split)))
    return DictDataLoader(DictDataset(name, split, {"x": X}, Y), batch_size=batch_size)


def test_predict_returns_golds_probs_and_argmax_or_value_preds():
    model = _TwoTaskModel()
    loader = _loader("both", "valid", {"cls": torch.arange(12) % 3, "reg": torch.randn(12)})
    results = predict(model, loader, return_preds=True)
    X = loader.dataset.X_dict["x"]
    with torch.no_grad():
        probs = torch.softmax(model.heads["cls"](X), dim=1)
        values = model.heads["reg"](X)
    assert torch.allclose(results["probs"]["cls"], probs) and torch.equal(results["preds"]["cls"], probs.argmax(1))
    assert torch.allclose(results["preds"]["reg"], values)
    assert torch.equal(results["golds"]["cls"], torch.arange(12) % 3)


def test_score_keys_by_label_dataset_split_metric_and_matches_scorer():
    model = _TwoTaskModel()
    a = _loader("onlycls", "test", {"cls": torch.arange(12) % 3})
    b = _loader("both", "valid", {"cls": torch.full((12,), -1), "reg": torch.randn(12)})
    scores = score(model, [a, b])
    assert set(scores) == {"cls/onlycls/test/accuracy", "cls/onlycls/test/f1_macro", "reg/both/valid/mse"}
    direct = predict(model, a, return_preds=True)
    expected = skm.accuracy_score(direct["golds"]["cls"].numpy(), direct["preds"]["cls"].numpy())
    assert scores["cls/onlycls/test/accuracy"] == pytest.approx(expected)
    values = predict(model, b)["probs"]["reg"][:, 0]
    assert scores["reg/both/valid/mse"] == pytest.approx(
        skm.mean_squared_error(b.dataset.Y_dict["reg"].numpy(), values.numpy()), abs=1e-6
    )


def test_score_runs_only_labelled_tasks_in_eval_mode_and_restores_training_mode():
    model = _TwoTaskModel()
    model.train()
    score(model, [_loader("onlycls", "test", {"cls": torch.arange(12) % 3})])
    assert model.calls and all(tasks == ["cls"] and not training for tasks, training in model.calls)
    assert model.training


def test_remap_labels_scores_a_label_with_another_task_or_drops_it():
    model = _TwoTaskModel()
    loader = _loader("d", "train", {"other": torch.arange(12) % 3, "cls": torch.arange(12) % 3})
    scores = score(model, [loader], remap_labels={"other": "cls", "cls": None})
    assert set(scores) == {"other/d/train/accuracy", "other/d/train/f1_macro"}
    with pytest.raises(ValueError, match="task 'nope'"):
        score(model, [loader], remap_labels={"other": "nope"})


def test_labels_to_tasks_matches_by_name():
    assert labels_to_tasks(["a", "x"], ["a", "b"]) == {"a": "a"}


def test_scoring_one_label_twice_under_one_dataset_and_split_is_an_error():
    model = _TwoTaskModel()
    loader = _loader("d", "train", {"cls": torch.arange(12) % 3})
    with pytest.raises(ValueError, match="label 'cls' as dataset 'd', split 'train'"):
        score(model, [loader, loader])
    # loaders may share a dataset name and split when their labels differ (their keys do)
    other = _loader("d", "train", {"reg": torch.randn(12)})
    assert set(score(model, [loader, other])) == {"cls/d/train/accuracy", "cls/d/train/f1_macro", "reg/d/train/mse"}


def test_token_level_labels_are_flattened_and_padding_ignored():
    class Tagger(_TwoTaskModel):
        def task_outputs(self, X, task_names):
            return {"cls": torch.softmax(self.heads["cls"](X["x"]), dim=-1)}

    seqs = [torch.randn(3, 2), torch.randn(1, 2), torch.randn(2, 2)]
    tags = [torch.tensor([0, 1, 2]), torch.tensor([1]), torch.tensor([2, 0])]
    ds = DictDataset("tok", "test", {"x": seqs}, {"cls": tags})
    model = Tagger()
    scores = score(model, [DictDataLoader(ds, batch_size=2)], scorers={"cls": Scorer(["accuracy"])})
    with torch.no_grad():
        pred = [model.heads["cls"](s).argmax(-1) for s in seqs]
    correct = sum(int((p == t).sum()) for p, t in zip(pred, tags))
    assert scores["cls/tok/test/accuracy"] == pytest.approx(correct / 6)


def test_as_dataframe_has_snorkel_columns():
    pd = pytest.importorskip("pandas")
    frame = score(_TwoTaskModel(), [_loader("d", "test", {"cls": torch.arange(12) % 3})], as_dataframe=True)
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.columns) == ["label", "dataset", "split", "metric", "score"]
    assert set(frame["metric"]) == {"accuracy", "f1_macro"}


def test_one_d_classifier_outputs_are_rejected_with_advice():
    class Flat(_TwoTaskModel):
        def task_outputs(self, X, task_names):
            return {"cls": X["x"][:, 0]}

    with pytest.raises(ValueError, match="regression Scorer"):
        score(Flat(), [_loader("d", "test", {"cls": torch.arange(12) % 3})])


def test_scores_are_python_floats_computed_in_float64():
    got = Scorer(["accuracy", "f1", "precision", "matthews_corrcoef"]).score([1, 0, 1, 0, 1], [1, 0, 1, 1, 0])
    assert all(type(v) is float for v in got.values())
    assert got["accuracy"] == 0.6  # not float32's 0.6000000238418579
    assert got["f1"] == 2 / 3  # tp=2, fp=1, fn=1: 2tp / (2tp + fp + fn), exactly in float64
    assert got["precision"] == 2 / 3
    assert got["matthews_corrcoef"] == skm.matthews_corrcoef([1, 0, 1, 0, 1], [1, 0, 1, 1, 0])


def test_roc_auc_refuses_logits_and_names_the_fix():
    golds = torch.tensor([0, 1, 1, 0, 1])
    logits = torch.tensor([[2.0, -1.0], [0.5, 3.0], [-2.0, 1.0], [1.0, 0.2], [0.1, 2.5]])
    with pytest.raises(ValueError, match="roc_auc needs probabilities.*output_funcs"):
        Scorer(metrics=["roc_auc"]).score(golds, probs=logits)
    # The ranking that matters is P(class 1) = softmax(logits)[:, 1], not logit 1.
    from sklearn.metrics import roc_auc_score

    probs = logits.softmax(dim=1)
    expected = roc_auc_score(golds.numpy(), probs[:, 1].numpy())
    assert Scorer(metrics=["roc_auc"]).score(golds, probs=probs)["roc_auc"] == pytest.approx(expected)


def test_roc_auc_matches_sklearn_with_ties_and_ranks_float64_scores():
    golds, _, probs = _random_classification(120, 2, seed=5)
    probs = probs.double()
    probs[::4] = torch.tensor([0.5, 0.5], dtype=torch.float64)  # tied scores share their mean rank
    got = Scorer(["roc_auc"]).score(golds, None, probs)["roc_auc"]
    assert got == pytest.approx(skm.roc_auc_score(golds.numpy(), probs[:, 1].numpy()), abs=ROC_AUC_TOL)
    # Scores 1e-12 apart tie in float32 (AUC 0.5) but not in float64, where the positive ranks first.
    close = torch.tensor([[0.5, 0.5], [0.5 - 1e-12, 0.5 + 1e-12]], dtype=torch.float64)
    assert skm.roc_auc_score([0, 1], close[:, 1].numpy()) == 1.0
    assert Scorer(["roc_auc"]).score([0, 1], None, close)["roc_auc"] == 1.0


def test_multiclass_roc_auc_is_the_mean_of_the_one_vs_rest_aucs():
    golds, _, probs = _random_classification(90, 3, seed=6)
    one_vs_rest = [skm.roc_auc_score((golds == c).numpy(), probs[:, c].double().numpy()) for c in range(3)]
    got = Scorer(["roc_auc"]).score(golds, None, probs)["roc_auc"]
    assert got == pytest.approx(sum(one_vs_rest) / 3, abs=ROC_AUC_TOL)


class _Constant(nn.Module):
    """A classifier whose outputs tie: every row is [0.5, 0.5]."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    @property
    def task_names(self):
        return ["cls"]

    def task_outputs(self, X, task_names):
        return {"cls": torch.full((len(X["x"]), 2), 0.5)}

    def scorers(self):
        return {"cls": Scorer(["accuracy"])}


def test_predict_and_score_break_ties_by_the_row_number_hash_across_batches():
    loader = _loader("d", "valid", {"cls": torch.ones(12, dtype=torch.long)}, batch_size=5)
    preds = predict(_Constant(), loader, return_preds=True)["preds"]["cls"]
    expected = [int(hashlib.sha1(str(row).encode()).hexdigest(), 16) % 2 for row in range(12)]
    assert preds.tolist() == expected  # row numbers count over the whole loader, not per batch
    assert score(_Constant(), [loader])["cls/d/valid/accuracy"] == sum(expected) / 12


def test_metric_score_filters_rows_by_value_and_keeps_minus_one_as_a_class_otherwise():
    golds, preds = np.array([0, 0, 0, 1, 1]), np.array([0, -1, 0, 1, 0])
    assert metric_score(golds, preds, metric="accuracy") == 3 / 5  # the -1 prediction is wrong
    assert metric_score(golds, preds, metric="accuracy", filter_dict={"preds": [-1]}) == 3 / 4
    assert metric_score(golds, preds, metric="accuracy", filter_dict={"golds": [0], "preds": [-1]}) == 1 / 2
    assert metric_score(golds, preds, metric="coverage") == 4 / 5
    assert metric_score(golds[[0, 2, 3, 4]], preds[[0, 2, 3, 4]], metric="fbeta", beta=2.0) == pytest.approx(
        skm.fbeta_score(golds[[0, 2, 3, 4]], preds[[0, 2, 3, 4]], beta=2.0), abs=1e-15
    )


def test_metric_score_errors_name_the_problem():
    golds = np.array([0, 1, 1])
    with pytest.raises(ValueError, match="The metric you provided \\('f2'\\)"):
        metric_score(golds, golds, metric="f2")
    with pytest.raises(ValueError, match="non-integer"):
        metric_score(golds, np.array([0, 1, 0.5]), metric="accuracy")
    with pytest.raises(ValueError, match="filter_dict must only include keys in"):
        metric_score(golds, golds, metric="accuracy", filter_dict={"labels": [0]})
    with pytest.raises(ValueError, match="'accuracy' requires access to preds"):
        metric_score(golds, metric="accuracy")
    with pytest.raises(TypeError, match="average"):
        metric_score(golds, golds, metric="f1", average="micro")


def test_score_slices_scores_all_rows_and_each_slice():
    golds, preds = np.array([0, 1, 0, 1, 0, 1]), np.array([0, 0, 0, 1, 1, 1])
    S = np.rec.fromarrays([np.array([1, 1, 1, 0, 0, 0]), np.array([0, 0, 0, 1, 1, 1])], names=["head", "tail"])
    got = Scorer(["accuracy"]).score_slices(S, golds, preds, preds_to_probs(preds, 2))
    assert got == {"overall": {"accuracy": 4 / 6}, "head": {"accuracy": 2 / 3}, "tail": {"accuracy": 2 / 3}}
    frame = Scorer(["accuracy"]).score_slices({"head": S["head"]}, golds, preds, as_dataframe=True)
    assert frame.loc["head", "accuracy"] == 2 / 3 and frame.loc["overall", "accuracy"] == 4 / 6
    with pytest.raises(ValueError, match="same number of elements"):
        Scorer(["accuracy"]).score_slices(S, golds[:2], preds)
    with pytest.raises(ValueError, match="slice 'empty' holds no row"):
        Scorer(["accuracy"]).score_slices({"empty": np.zeros(6)}, golds, preds)
