import hashlib

import numpy as np
import pytest
import torch

from mtlkit.utils import collect_flow_outputs_by_suffix, list_to_tensor, pad_batch, preds_to_probs, probs_to_preds


def test_pad_batch_pads_right_or_left_and_cuts_to_max_len():
    batch = [torch.tensor([7.0, 8.0, 9.0]), torch.tensor([1.0]), torch.tensor([2.0, 3.0])]
    padded, mask = pad_batch(batch)
    assert torch.equal(padded, torch.tensor([[7.0, 8, 9], [1, 0, 0], [2, 3, 0]]))
    assert torch.equal(mask, torch.tensor([[0.0, 0, 0], [0, 1, 1], [0, 0, 1]]))
    padded, mask = pad_batch(batch, max_len=2, pad_value=-5, left_padded=True)
    assert torch.equal(padded, torch.tensor([[8.0, 9], [-5, 1], [2, 3]]))  # left padding keeps the tail
    assert torch.equal(mask, torch.tensor([[0.0, 0], [1, 0], [0, 0]]))
    with pytest.raises(ValueError, match="empty"):
        pad_batch([])


def test_list_to_tensor_stacks_equal_shapes_and_pads_flattened_items_otherwise():
    assert torch.equal(list_to_tensor([torch.tensor(1), torch.tensor(2)]), torch.tensor([1, 2]))
    grids = [torch.full((2, 2), float(i)) for i in range(3)]
    assert list_to_tensor(grids).shape == (3, 2, 2)
    mixed = [torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([5.0])]
    assert torch.equal(list_to_tensor(mixed), torch.tensor([[1.0, 2, 3, 4], [5, 0, 0, 0]]))


def test_collect_flow_outputs_by_suffix_keeps_matching_names_in_sorted_order():
    outputs = {"z_head": 1, "a_head": 2, "a_body": 3}
    assert collect_flow_outputs_by_suffix(outputs, "_head") == [2, 1]


def test_probs_to_preds_takes_the_argmax_when_there_is_no_tie():
    probs = torch.tensor([[0.2, 0.8], [0.7, 0.3], [0.1, 0.0]])
    assert probs_to_preds(probs).tolist() == [1, 0, 0]


def test_random_tie_break_is_the_sha1_of_the_row_number_modulo_the_tied_classes():
    probs = np.array([[0.5, 0.5, 0.0]] * 6 + [[1 / 3, 1 / 3, 1 / 3]] * 6)
    got = probs_to_preds(probs)
    assert isinstance(got, np.ndarray)
    for row in range(12):
        tied = [0, 1] if row < 6 else [0, 1, 2]
        digest = int(hashlib.sha1(str(row).encode()).hexdigest(), 16)
        assert got[row] == tied[digest % len(tied)]
    assert len(set(got[:6].tolist())) == 2  # the hash spreads ties over both classes, unlike argmax


def test_values_within_tol_of_the_maximum_tie():
    probs = torch.tensor([[0.5, 0.5 - 1e-6], [0.5, 0.49]])
    assert probs_to_preds(probs, tie_break_policy="abstain").tolist() == [-1, 0]
    assert probs_to_preds(probs, tie_break_policy="abstain", tol=1e-7).tolist() == [0, 0]


def test_true_random_tie_break_draws_among_the_tied_classes_only():
    torch.manual_seed(0)
    probs = torch.tensor([[0.0, 0.5, 0.5]] * 200)
    got = probs_to_preds(probs, tie_break_policy="true-random")
    assert set(got.tolist()) == {1, 2}


def test_probs_to_preds_refuses_an_unknown_policy_or_a_single_class():
    with pytest.raises(ValueError, match="tie_break_policy='first'"):
        probs_to_preds(torch.ones(2, 2) / 2, tie_break_policy="first")
    with pytest.raises(ValueError, match="at least 2 classes"):
        probs_to_preds(torch.ones(2, 1))


def test_preds_to_probs_is_one_hot_and_refuses_abstains():
    assert preds_to_probs(np.array([2, 0]), 3).tolist() == [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]
    assert torch.equal(probs_to_preds(preds_to_probs(torch.tensor([1, 0, 1]), 2)), torch.tensor([1, 0, 1]))
    with pytest.raises(ValueError, match="abstain"):
        preds_to_probs(np.array([0, -1]), 2)
