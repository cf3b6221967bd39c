import pytest
import torch
import torch.nn.functional as F

from mtlkit import cross_entropy_with_probs


def _reference(logits, target, weight):
    """-sum_c w_c y_ic log softmax(x_i)_c, row by row in float64."""
    logits, target = logits.double(), target.double()
    log_p = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    return -(target * weight.double() * log_p).sum(dim=1)


def test_matches_the_closed_form_with_class_weights_for_every_reduction():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 4, generator=g, dtype=torch.float64)
    target = torch.rand(6, 4, generator=g, dtype=torch.float64)
    target = target / target.sum(dim=1, keepdim=True)
    weight = torch.tensor([1.0, 2.0, 0.5, 3.0], dtype=torch.float64)
    rows = _reference(logits, target, weight)
    assert torch.allclose(cross_entropy_with_probs(logits, target, weight, reduction="none"), rows, atol=1e-12)
    assert cross_entropy_with_probs(logits, target, weight, reduction="sum").item() == pytest.approx(
        rows.sum().item(), abs=1e-12
    )
    # the mean is over rows: the class weights do not renormalise it
    assert cross_entropy_with_probs(logits, target, weight).item() == pytest.approx(rows.mean().item(), abs=1e-12)


def test_one_hot_targets_give_the_hard_label_cross_entropy():
    logits = torch.randn(5, 3, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 2, 1, 1, 0])
    one_hot = F.one_hot(labels, 3).float()
    assert torch.allclose(
        cross_entropy_with_probs(logits, one_hot, reduction="none"), F.cross_entropy(logits, labels, reduction="none")
    )


def test_bad_reduction_or_shape_is_refused():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="'reduction' must be one of"):
        cross_entropy_with_probs(x, x.softmax(1), reduction="avg")
    with pytest.raises(ValueError, match="same shape"):
        cross_entropy_with_probs(x, torch.tensor([0, 1]))
