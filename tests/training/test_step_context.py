"""The step-context mechanism: what the Trainer hands balancers that declare `needs`."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mtlkit import ConfigError, Trainer
from mtlkit.weighting import LossBalancer
from mtlkit.weighting.methods.famo import FAMO

QUIET = {"progress_bar": False}


class SpyFAMO(FAMO):
    """FAMO that records each post-step update with the model's parameters at that moment."""

    def __init__(self, model, **kwargs):
        super().__init__(tasks=model.task_names, **kwargs)
        self.model = [model]  # a list: not a submodule
        self.updates = []

    def update(self, losses):
        params = {k: v.detach().clone() for k, v in self.model[0].state_dict().items()}
        self.updates.append(({k: float(v) for k, v in losses.items()}, params))
        super().update(losses)


class Drawer(LossBalancer):
    """Sum of losses that draws one extra training batch per step and records what it saw."""

    needs = frozenset({"extra_train_batch"})

    def __init__(self, tasks=None, watched=()):
        super().__init__(tasks)
        self.watched = list(watched)  # tensors the extra forward must leave unchanged
        self.seen = []

    def combine(self, losses, index):
        before = [t.clone() for t in self.watched]
        extra = self.context.next_train_batch()
        self.context.losses(extra)
        kept = all(torch.equal(b, t) for b, t in zip(before, self.watched))
        self.seen.append((self.context.batch, extra, kept))
        return losses.sum(), torch.ones_like(losses)


def test_famo_learns_after_every_step_from_the_same_batchs_losses_after_the_step(make_model, make_loaders):
    model = make_model(0)
    famo = SpyFAMO(model)
    # One batch per dataset and epoch, so "the same batch" is the whole training set of its dataset.
    loaders = make_loaders(batch_size=32)
    trainer = Trainer(n_epochs=2, lr=0.05, seed=0, weighting=famo, **QUIET)
    trainer.fit(model, loaders)
    assert len(famo.updates) == trainer.step == 4 and int(famo.adam_step) == 4
    probe = make_model(1)
    for losses, params in famo.updates:
        probe.load_state_dict(params)
        (task,) = losses
        loader = next(l for l in loaders if l.dataset.split == "train" and task in l.dataset.Y_dict)
        X, Y = loader.dataset.X_dict["x"], loader.dataset.Y_dict[task]
        with torch.no_grad():
            expected = F.cross_entropy(probe.heads[task](probe.trunk(X)), Y)
        assert losses[task] == pytest.approx(float(expected), rel=1e-5)


def test_famo_next_batch_approximation_stays_an_option(make_model, make_loaders):
    model = make_model(0)
    famo = SpyFAMO(model, post_step=False)
    Trainer(n_epochs=1, lr=0.05, seed=0, weighting=famo, **QUIET).fit(model, make_loaders())
    assert famo.updates == [] and famo.needs == frozenset()


def test_extra_batches_come_from_the_steps_loader_in_an_order_of_their_own(make_model, make_loaders):
    model = make_model(0)
    model.trunk = nn.Sequential(nn.Linear(2, 8), nn.BatchNorm1d(8), nn.ReLU())
    drawer = Drawer(watched=model.buffers())
    trainer = Trainer(n_epochs=2, lr=0.05, seed=0, weighting=drawer, **QUIET)
    trainer.fit(model, make_loaders())
    assert trainer.step == 16 == len(drawer.seen)  # the epochs keep their planned length
    for (X, Y), (X_extra, Y_extra), buffers_kept in drawer.seen:
        assert set(Y) == set(Y_extra)  # same dataset: the same task is labelled
        assert not torch.equal(X["x"], X_extra["x"])
        assert buffers_kept  # BatchNorm statistics untouched by the extra forward


def test_a_balancer_needing_validation_batches_without_a_validation_loader_is_refused(make_model, make_loaders):
    trainer = Trainer(n_epochs=1, weighting="auto_lambda", **QUIET)
    with pytest.raises(ConfigError, match=r"AutoLambda needs a validation batch.*valid_split=\['valid'\]"):
        trainer.fit(make_model(), make_loaders(splits=("train",)))


def test_unknown_needs_and_undeclared_draws_are_errors(make_model, make_loaders):
    class Unknown(Drawer):
        needs = frozenset({"a_crystal_ball"})

    with pytest.raises(ValueError, match="unknown needs \\['a_crystal_ball'\\]"):
        Trainer(n_epochs=1, weighting=Unknown(), **QUIET).fit(make_model(), make_loaders())

    class Undeclared(Drawer):
        needs = frozenset({"valid_batch"})

    with pytest.raises(RuntimeError, match="draws a extra_train_batch but does not declare it"):
        Trainer(n_epochs=1, weighting=Undeclared(), **QUIET).fit(make_model(), make_loaders())


def test_extra_training_batches_are_accepted_under_torch_distributed(make_model):
    """Each rank draws from its own training shard (tests/training/test_distributed.py checks the result)."""
    from mtlkit.training.step_context import StepContexts
    from mtlkit.weighting import get

    model = make_model()
    for name in ("modo", "sdmgrad", "famo"):
        contexts = StepContexts(
            get(name, tasks=model.task_names), model, [], None, torch.device("cpu"), True, ("valid",)
        )
        assert contexts.needs


class TwoRanks:
    """Collectives of a pretend two-process run whose other process holds `other` (a flat tensor)."""

    world_size = 2
    shards_jacobian = reduces_in_backward = False

    def __init__(self, other):
        self.other, self.kinds = other, []

    def all_reduce_sum(self, tensor, kind):
        tensor += self.other
        self.kinds.append(kind)


def test_global_mean_of_gradients_counts_a_missing_gradient_as_zero_and_keeps_shapes():
    from mtlkit.weighting.context import global_mean_grads

    params = [torch.zeros(2, 2, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)]
    mine = [torch.arange(4.0, dtype=torch.float64).view(2, 2), None]
    other = torch.arange(10.0, 17.0, dtype=torch.float64)  # the other process's gradients, flattened
    collectives = TwoRanks(other)
    first, second = global_mean_grads(mine, params, collectives, "gradients")
    torch.testing.assert_close(first, (mine[0] + other[:4].view(2, 2)) / 2)
    torch.testing.assert_close(second, other[4:] / 2)
    assert collectives.kinds == ["gradients"]  # one all-reduce for all parameters
    assert global_mean_grads(mine, params, None, "gradients") == mine  # one process: as they are
