import json
import sys

import pytest
import torch

from mtlkit import ConfigError, Trainer
from mtlkit.training.checkpoint import load_checkpoint
from mtlkit.weighting import LossBalancer

QUIET = {"progress_bar": False}


class SpyEW(LossBalancer):
    """Sum of losses that records how the Trainer calls it."""

    def __init__(self, tasks=None):
        super().__init__(tasks)
        self.calls = []
        self.epoch_ends = 0

    def backward(self, losses, shared_params=None, shared_reps=None):
        self.calls.append({"tasks": sorted(losses), "shared_params": shared_params, "shared_reps": shared_reps})
        return super().backward(losses, shared_params=shared_params, shared_reps=shared_reps)

    def combine(self, losses, index):
        return losses.sum(), torch.ones_like(losses)

    def epoch_end(self):
        self.epoch_ends += 1


def _with_nan_row(loaders, dataset="dsB"):
    loader = next(l for l in loaders if l.dataset.name == dataset and l.dataset.split == "train")
    loader.dataset.X_dict["x"][0, 0] = float("nan")
    return loaders


def test_fit_lowers_the_training_loss_and_scores_valid_and_test_at_the_end(make_model, make_loaders):
    trainer = Trainer(n_epochs=6, lr=0.05, seed=0, **QUIET)
    final = trainer.fit(make_model(), make_loaders())
    losses = [record["model/all/train/loss"] for record in trainer.history]
    assert losses[-1] < 0.8 * losses[0]
    assert set(final) == {f"{t}/{d}/{s}/accuracy" for t, d in (("a", "dsA"), ("b", "dsB")) for s in ("valid", "test")}
    assert all("test" not in key for record in trainer.history for key in record)


# training_step calls per step: FAMO recomputes the losses after the step, MoDo and SDMGrad draw
# two extra batches, Auto-λ forwards a validation batch and this batch twice more.
FORWARDS_PER_STEP = {"dwa": 1, "uw": 1, "rlw": 1, "famo": 2, "gradvac": 1, "modo": 3, "sdmgrad": 3, "auto_lambda": 4}


@pytest.mark.parametrize("weighting", list(FORWARDS_PER_STEP))
def test_run_resumed_after_epoch_1_ends_with_the_parameters_of_an_uninterrupted_run(
    weighting, make_model, make_loaders, params, tmp_path
):
    # No `seed`: the batch scheduler's seed is drawn from torch's generator, seeded by make_model.
    config = dict(n_epochs=3, lr=0.05, lr_scheduler="linear", weighting=weighting, checkpointing=True, **QUIET)
    reference = make_model(0, dropout=0.3)
    uninterrupted = Trainer(**config, checkpoint_dir=str(tmp_path / "ref"))
    uninterrupted.fit(reference, make_loaders())

    # Same run, cut off at the third batch of epoch 2 (8 batches per epoch).
    with pytest.raises(KeyboardInterrupt):
        Trainer(**config, checkpoint_dir=str(tmp_path / "run")).fit(
            make_model(0, dropout=0.3, interrupt_at=10 * FORWARDS_PER_STEP[weighting] + 1), make_loaders()
        )
    # Resume in a "new process": other initial weights, loader seeds and global RNG state.
    resumed_model = make_model(7, dropout=0.3)
    torch.manual_seed(1234)
    resumed = Trainer(**config, checkpoint_dir=str(tmp_path / "run"))
    resumed.fit(resumed_model, make_loaders(loader_seed=99), resume_from=tmp_path / "run" / "last.pt")

    assert all(torch.equal(a, b) for a, b in zip(params(resumed_model), params(reference)))
    mine, theirs = resumed.balancer.state_dict(), uninterrupted.balancer.state_dict()
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(v, theirs[k]) for k, v in mine.items() if isinstance(v, torch.Tensor))
    assert resumed.history == uninterrupted.history and resumed.step == uninterrupted.step == 24


def test_save_and_load_continue_a_finished_run_for_more_epochs(make_model, make_loaders, params, tmp_path):
    reference = make_model(0)
    Trainer(n_epochs=2, lr=0.05, seed=0, **QUIET).fit(reference, make_loaders())

    first = make_model(0)
    trainer = Trainer(n_epochs=1, lr=0.05, seed=0, **QUIET)
    trainer.fit(first, make_loaders())
    trainer.save(tmp_path / "t.pt")
    second = make_model(3)
    Trainer.load(tmp_path / "t.pt", second, n_epochs=2).fit(second, make_loaders(loader_seed=5))

    assert all(torch.equal(a, b) for a, b in zip(params(second), params(reference)))


def test_load_asks_again_for_objects_a_checkpoint_cannot_hold(make_model, make_loaders, tmp_path):
    class MyAdam(torch.optim.Adam):
        pass

    trainer = Trainer(optimizer=MyAdam, **QUIET)
    trainer.fit(make_model(), make_loaders())
    trainer.save(tmp_path / "t.pt")
    with pytest.raises(ConfigError, match=r"\['optimizer'\].*optimizer=\.\.\."):
        Trainer.load(tmp_path / "t.pt", make_model())
    assert Trainer.load(tmp_path / "t.pt", make_model(), optimizer=MyAdam).config.optimizer is MyAdam


def test_save_before_fit_says_to_fit_first(tmp_path):
    with pytest.raises(RuntimeError, match="call fit"):
        Trainer().save(tmp_path / "t.pt")


@pytest.mark.parametrize("attribute", ["model", "optimizer", "balancer", "batch_scheduler"])
def test_per_fit_objects_before_fit_say_to_fit_first(attribute):
    with pytest.raises(RuntimeError, match=f"Trainer.{attribute} is set by fit: call fit"):
        getattr(Trainer(), attribute)


def test_same_seed_same_run_and_other_seed_other_batch_order(make_model, make_loaders, params):
    runs = {}
    for name, seed in (("first", 0), ("again", 0), ("other", 1)):
        model = make_model(0, dropout=0.3)
        Trainer(n_epochs=2, lr=0.05, seed=seed, **QUIET).fit(model, make_loaders())
        runs[name] = params(model)
    assert all(torch.equal(a, b) for a, b in zip(runs["first"], runs["again"]))
    assert not all(torch.equal(a, b) for a, b in zip(runs["first"], runs["other"]))


def test_nonfinite_loss_raises_naming_task_step_and_dataset(make_model, make_loaders):
    with pytest.raises(FloatingPointError, match=r"\['b'\] is not finite at step \d+ \(epoch 1\).*'dsB'"):
        Trainer(**QUIET).fit(make_model(), _with_nan_row(make_loaders()))


def test_nonfinite_loss_skip_drops_that_step_only(make_model, make_loaders, params):
    model = make_model()
    trainer = Trainer(n_epochs=2, nonfinite_loss="skip", **QUIET)
    trainer.fit(model, _with_nan_row(make_loaders()))
    assert trainer.skipped_steps == 2  # the batch holding the NaN row, once per epoch
    assert trainer.step == 2 * 8 - 2
    assert all(torch.isfinite(p).all() for p in params(model))


def test_nonfinite_gradient_of_a_finite_loss_is_caught_too(make_model, make_loaders, params):
    with pytest.raises(FloatingPointError, match=r"gradient of task\(s\) \['[ab]'\] is not finite at step 1"):
        Trainer(**QUIET).fit(make_model(nan_grad=True), make_loaders())
    model = make_model(nan_grad=True)
    before = params(model)
    trainer = Trainer(nonfinite_loss="skip", **QUIET)
    trainer.fit(model, make_loaders())
    assert trainer.skipped_steps == 8 and trainer.step == 0
    assert all(torch.equal(a, b) for a, b in zip(params(model), before))


@pytest.mark.parametrize("rep_grad", [False, True])
def test_balancer_gets_shared_parameters_or_the_shared_representation(rep_grad, make_model, make_loaders):
    model = make_model(rep_grad=rep_grad)
    spy = SpyEW()
    Trainer(n_epochs=2, weighting=spy, **QUIET).fit(model, make_loaders())
    assert spy.task_names == ["a", "b"]
    assert spy.epoch_ends == 2 and len(spy.calls) == 16
    call = spy.calls[0]
    if rep_grad:
        assert call["shared_params"] is None and call["shared_reps"][0].shape == (8, 8)
    else:
        assert call["shared_reps"] is None
        assert [id(p) for p in call["shared_params"]] == [id(p) for p in model.shared_parameters()]


def test_balancer_object_for_other_tasks_is_refused(make_model, make_loaders):
    with pytest.raises(ConfigError, match=r"built for tasks \['x', 'y'\]"):
        Trainer(weighting=SpyEW(["x", "y"]), **QUIET).fit(make_model(), make_loaders())


def test_balancer_parameters_are_trained(make_model, make_loaders):
    trainer = Trainer(n_epochs=2, lr=0.05, weighting="uw", **QUIET)
    trainer.fit(make_model(), make_loaders())
    assert not torch.equal(trainer.balancer.log_var.detach(), torch.zeros(2))


def test_gradients_are_clipped_to_grad_clip(make_model, make_loaders, params):
    model = make_model()
    before = params(model)
    Trainer(optimizer="sgd", lr=1.0, grad_clip=1e-4, **QUIET).fit(model, make_loaders(n=8))  # 2 steps
    moved = torch.cat([(a - b).flatten() for a, b in zip(params(model), before)]).norm()
    assert 0 < moved <= 2 * 1e-4 * (1 + 1e-5)


def test_lr_schedule_steps_once_per_batch(make_model, make_loaders):
    trainer = Trainer(n_epochs=2, lr=0.1, lr_scheduler="linear", **QUIET)
    trainer.fit(make_model(), make_loaders())
    assert trainer.lr_scheduler.last_epoch == 16
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.0)


def test_best_model_is_restored_at_the_end(make_model, make_loaders, params, tmp_path):
    # Maximising the training loss makes epoch 1 the best; its weights are those of a 1-epoch run.
    config = dict(lr=0.05, seed=0, checkpointing=True, checkpoint_dir=str(tmp_path), **QUIET)
    one_epoch = make_model(0)
    Trainer(n_epochs=1, **config).fit(one_epoch, make_loaders())
    model = make_model(0)
    trainer = Trainer(n_epochs=3, checkpoint_metric="model/all/train/loss:max", **config)
    trainer.fit(model, make_loaders())
    assert trainer.monitor.best_epoch == 1
    assert all(torch.equal(a, b) for a, b in zip(params(model), params(one_epoch)))
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["epoch"] == 1 and torch.equal(best["model"]["trunk.0.weight"], one_epoch.trunk[0].weight)


def test_checkpoint_runway_delays_best_model_tracking(make_model, make_loaders, tmp_path):
    trainer = Trainer(
        n_epochs=3,
        lr=0.05,
        checkpointing=True,
        checkpoint_dir=str(tmp_path),
        checkpoint_runway=2,
        checkpoint_metric="model/all/train/loss:max",
        **QUIET,
    )
    trainer.fit(make_model(), make_loaders())
    assert trainer.monitor.best_epoch == 2


def test_early_stopping_stops_after_patience_evaluations_without_improvement(make_model, make_loaders):
    trainer = Trainer(n_epochs=10, lr=0.05, early_stopping=2, checkpoint_metric="model/all/train/loss:max", **QUIET)
    trainer.fit(make_model(), make_loaders())
    assert trainer.epoch == 3 and len(trainer.history) == 3


def test_checkpoint_metric_missing_from_the_scores_lists_close_keys(make_model, make_loaders):
    trainer = Trainer(early_stopping=3, checkpoint_metric="a/dsA/valid/acuracy:max", **QUIET)
    with pytest.raises(ConfigError, match=r"'a/dsA/valid/acuracy'.*'a/dsA/valid/accuracy'"):
        trainer.fit(make_model(), make_loaders())


def test_loader_of_an_unconfigured_split_is_an_error(make_model, make_loaders):
    with pytest.raises(ConfigError, match=r"'dsA' has split 'dev'"):
        Trainer(**QUIET).fit(make_model(), make_loaders(splits=("train", "dev")))


def test_no_training_loader_is_an_error(make_model, make_loaders):
    with pytest.raises(ConfigError, match="no dataloader has a training split"):
        Trainer(**QUIET).fit(make_model(), make_loaders(splits=("valid",)))


def test_model_without_the_protocol_is_refused(make_loaders):
    with pytest.raises(TypeError, match="lacks task_names, training_step"):
        Trainer(**QUIET).fit(torch.nn.Linear(2, 2), make_loaders())


def test_progress_bar_shows_the_running_loss(make_model, make_loaders, capsys):
    Trainer(progress_bar=True).fit(make_model(), make_loaders())
    assert "loss=" in capsys.readouterr().err


@pytest.mark.parametrize("precision, dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_precision_bf16_runs_the_forward_under_autocast(precision, dtype, make_model, make_loaders, params):
    model = make_model()
    Trainer(precision=precision, **QUIET).fit(model, make_loaders())
    assert set(model.trunk_dtypes) == {dtype}
    assert all(p.dtype == torch.float32 for p in params(model))


def test_json_log_holds_task_losses_lr_weights_and_metrics(make_model, make_loaders, tmp_path):
    Trainer(n_epochs=2, logging=True, log_dir=str(tmp_path), log_every=4, **QUIET).fit(make_model(), make_loaders())
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    train = [r for r in records if "train/lr" in r]
    assert [r["step"] for r in train] == [4, 8, 12, 16]
    for prefix in ("train/loss/", "train/weight/"):
        assert all(any(k.startswith(prefix) for k in r) for r in train)
    evals = [r for r in records if "a/dsA/valid/accuracy" in r]
    assert [r["epoch"] for r in evals] == [1, 2, 2]  # two epoch evaluations and the final one
    assert "a/dsA/test/accuracy" in evals[-1] and "model/all/train/loss" in evals[0]


def test_logged_lr_is_the_one_each_logged_step_used(make_model, make_loaders, tmp_path):
    # LinearLR from lr to 0 over the run's 16 steps: step k (from 1) runs at lr * (1 - (k - 1) / 16)
    trainer = Trainer(
        n_epochs=2, lr=0.1, lr_scheduler="linear", logging=True, log_dir=str(tmp_path), log_every=3, **QUIET
    )
    trainer.fit(make_model(), make_loaders())
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    logged = {r["step"]: r["train/lr"] for r in records if "train/lr" in r}
    assert trainer.step == 16 and list(logged) == [3, 6, 9, 12, 15]
    assert logged == {k: pytest.approx(0.1 * (1 - (k - 1) / 16), rel=1e-9) for k in logged}


def test_tensorboard_writer_writes_event_files(make_model, make_loaders, tmp_path):
    Trainer(logging=True, log_writers="tensorboard", log_dir=str(tmp_path), **QUIET).fit(make_model(), make_loaders())
    assert list(tmp_path.glob("events.out.tfevents.*"))


def test_missing_tensorboard_names_the_extra(make_model, make_loaders, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    trainer = Trainer(logging=True, log_writers="tensorboard", log_dir=str(tmp_path), **QUIET)
    with pytest.raises(ConfigError, match=r"mtlkit\[tensorboard\]"):
        trainer.fit(make_model(), make_loaders())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_device_option_trains_on_cuda_in_bf16_and_resumes_exactly(make_model, make_loaders, params, tmp_path):
    config = dict(n_epochs=2, lr=0.05, device="cuda", precision="bf16", weighting="uw", checkpointing=True, **QUIET)
    reference = make_model(0)
    Trainer(**config, checkpoint_dir=str(tmp_path / "ref")).fit(reference, make_loaders())
    assert all(p.is_cuda for p in reference.parameters()) and set(reference.trunk_dtypes) == {torch.bfloat16}
    with pytest.raises(KeyboardInterrupt):
        Trainer(**config, checkpoint_dir=str(tmp_path / "run")).fit(make_model(0, interrupt_at=11), make_loaders())
    resumed = make_model(5)
    Trainer(**config, checkpoint_dir=str(tmp_path / "run")).fit(
        resumed, make_loaders(), resume_from=tmp_path / "run" / "last.pt"
    )
    assert all(torch.equal(a, b) for a, b in zip(params(resumed), params(reference)))


def test_restore_best_false_keeps_the_last_epoch_while_best_pt_holds_the_best(
    make_model, make_loaders, params, tmp_path
):
    config = dict(n_epochs=3, lr=0.05, checkpointing=True, progress_bar=False, seed=0)
    config["checkpoint_metric"] = "model/all/train/loss:max"  # the worst epoch, which is not the last here
    restored, kept = make_model(0), make_model(0)
    Trainer(**config, checkpoint_dir=str(tmp_path / "a")).fit(restored, make_loaders())
    Trainer(**config, checkpoint_dir=str(tmp_path / "b"), restore_best=False).fit(kept, make_loaders())
    best = torch.load(tmp_path / "b" / "best.pt", weights_only=True)["model"]
    last = torch.load(tmp_path / "b" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(restored.state_dict()[k], v) for k, v in best.items())
    assert all(torch.equal(kept.state_dict()[k], v) for k, v in last.items())
    assert not all(torch.equal(a, b) for a, b in zip(params(restored), params(kept)))


def test_snorkel_attributes_name_the_writer_checkpointer_and_warmup(make_model, make_loaders, tmp_path):
    from mtlkit import Checkpointer, LogWriter

    trainer = Trainer(
        n_epochs=2,
        seed=0,
        logging=True,
        checkpointing=True,
        log_writer="json",
        log_writer_config={"log_dir": str(tmp_path), "run_name": "run"},
        checkpointer_config={"checkpoint_dir": str(tmp_path / "ck"), "checkpoint_metric": "a/dsA/valid/accuracy:max"},
        lr_scheduler_config={"warmup_steps": 1, "warmup_unit": "epochs"},
        **QUIET,
    )
    trainer.fit(make_model(), make_loaders())
    assert isinstance(trainer.log_writer, LogWriter) and trainer.log_writer.log_dir == str(tmp_path / "run")
    log = json.loads((tmp_path / "run" / "log.json").read_text())
    assert [step for step, _ in log["model/all/train/loss"]] == [8, 16]  # one value per evaluation, at its step
    assert trainer.warmup_steps == 8  # one epoch: 4 batches of each of the two datasets
    assert trainer.lr_scheduler is not None  # the warm-up ramp (the schedule itself is constant)
    assert isinstance(trainer.checkpointer, Checkpointer) and trainer.checkpointer.monitor is trainer.monitor
    best = max(h["a/dsA/valid/accuracy"] for h in trainer.history)
    assert trainer.checkpointer.best_metric_dict == {"a/dsA/valid/accuracy": best}
    assert (tmp_path / "ck" / "best.pt").is_file()


def test_constant_schedule_trains_and_resumes_without_a_scheduler(make_model, make_loaders, tmp_path):
    trainer = Trainer(n_epochs=1, seed=0, **QUIET)
    trainer.fit(make_model(), make_loaders())
    assert trainer.lr_scheduler is None and trainer.log_writer is None and trainer.checkpointer is None
    trainer.save(tmp_path / "state.pt")
    model = make_model(seed=1)
    resumed = Trainer.load(tmp_path / "state.pt", model, n_epochs=2)
    resumed.fit(model, make_loaders())
    assert resumed.epoch == 2 and resumed.lr_scheduler is None


def test_loss_balancer_steps_do_not_ask_the_model_for_shared_parameters(make_model, make_loaders):
    model = make_model()
    calls = []
    shared = model.shared_parameters
    model.shared_parameters = lambda: calls.append(1) or shared()
    Trainer(n_epochs=1, weighting="ew", **QUIET).fit(model, make_loaders())
    assert calls == []  # EW weights the losses: the step reads no parameter list
    Trainer(n_epochs=1, weighting="mgda", **QUIET).fit(model, make_loaders())
    assert len(calls) == 8  # a gradient method gets them on each of the epoch's 8 steps
