"""The Trainer: one training loop for every model that implements `MultiTaskModel`.

A batch's path, top to bottom (`Trainer._train_step`): the batch scheduler picks a
dataloader → the strategy runs `model.training_step(X, Y)` (through its model wrapper)
and gives the per-task losses of the global batch → finiteness check → the strategy's
`backward` has the balancer fill `.grad` (on the shared parameters, or through the
shared representation when the model returns `shared_reps`) with the global batch's
gradients → gradient clipping → optimizer step → LR-schedule step. After each epoch:
`balancer.epoch_end()`, the strategy's `epoch_end`, scoring of the validation loaders
(reduced by the strategy), best-model tracking, early stopping and checkpoints (written
by the main process).

Everything that depends on the number of processes lives in the strategy
(`mtlkit.training.strategies`): this module has no distributed code.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from mtlkit.checks import FitChecks
from mtlkit.data import BatchScheduler, get_scheduler, move_to_device
from mtlkit.errors import ConfigError
from mtlkit.protocol import MultiTaskModel, StepOutput, host_values
from mtlkit.training.checkpoint import (
    Checkpointer,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)
from mtlkit.training.config import TrainerConfig
from mtlkit.training.loggers import Logger, LogWriter, build_loggers
from mtlkit.training.monitor import MetricMonitor
from mtlkit.training.optim import build_lr_scheduler, build_optimizer, warmup_batches
from mtlkit.training.step_context import StepContexts
from mtlkit.training.strategies import Strategy, build_strategy
from mtlkit.weighting import Balancer, BalanceResult, LossBalancer
from mtlkit.weighting import get as get_balancer

if TYPE_CHECKING:
    from mtlkit.protocol import TrainableModel

_T = TypeVar("_T")


class Trainer:
    """Trains a `MultitaskClassifier`, an `MTLModel` or an architecture: `Trainer(**config).fit(model, loaders)`.

    Snorkel's Trainer with a pluggable balancer (`weighting`), exact resume and
    checkpoints that cannot run code. The options and their defaults are those of
    `TrainerConfig`; `trainer.config` holds them. After `fit`, `history` lists the
    scores of every evaluation, and `model`, `optimizer`, `lr_scheduler`, `balancer` and
    `batch_scheduler` are the objects of the last fit (`lr_scheduler` is None for the
    constant schedule; before the first `fit`, reading the others raises RuntimeError),
    and, as in Snorkel, `log_writer` (the first writer, or None without logging),
    `checkpointer` (the `Checkpointer` whose monitor tracks the best model, or None
    without checkpointing) and `warmup_steps` (in batches). `strategy` is
    the `mtlkit.training.strategies.Strategy` that runs the fits (rank, world size, time
    spent in collectives); one Trainer may `fit` any number of times.
    """

    def __init__(self, name: str | None = None, **config: Any) -> None:
        self.name = type(self).__name__ if name is None else name  # Snorkel's label for the trainer
        self.config = TrainerConfig.from_dict(config)
        self._model: TrainableModel | None = None
        self._optimizer: torch.optim.Optimizer | None = None
        self.lr_scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        self._balancer: Balancer | None = None
        self._batch_scheduler: BatchScheduler | None = None
        self.monitor: MetricMonitor | None = None
        self.best_model: dict[str, torch.Tensor] | None = None
        self.epoch = 0  # epochs completed
        self.step = 0  # optimizer steps taken
        self.skipped_steps = 0  # steps skipped for a non-finite loss
        self.history: list[dict[str, float]] = []
        self.warmup_steps = 0
        self.log_writer: LogWriter | None = None
        self.checkpointer: Checkpointer | None = None
        self._pending: dict[str, Any] | None = None  # a checkpoint read by `Trainer.load`, resumed by `fit`
        self.strategy: Strategy = build_strategy(self.config)

    # ------------------------------------------------------------------ public API

    @property
    def model(self) -> TrainableModel:
        """The model of the last `fit`."""
        return _fitted(self._model, "model")

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The optimizer of the last `fit`."""
        return _fitted(self._optimizer, "optimizer")

    @property
    def balancer(self) -> Balancer:
        """The balancer of the last `fit`."""
        return _fitted(self._balancer, "balancer")

    @property
    def batch_scheduler(self) -> BatchScheduler:
        """The batch scheduler of the last `fit`."""
        return _fitted(self._batch_scheduler, "batch_scheduler")

    def fit(
        self,
        model: MultiTaskModel,
        dataloaders: Sequence[DataLoader],
        resume_from: str | Path | None = None,
    ) -> dict[str, float]:
        """Train `model`, restore its best state, and return the final validation and test scores.

        `dataloaders` are `DictDataLoader`s; each one's `dataset.split` assigns it to
        training, validation and/or test (`train_split`, `valid_split`, `test_split`).
        With `resume_from` (a checkpoint path), training continues exactly where that
        run stopped (also on another number of processes).
        """
        cfg = self.config
        train, valid, test = _split_loaders(dataloaders, cfg)
        checkpoint = load_checkpoint(resume_from) if resume_from is not None else self._pending
        self._pending = None
        device = self.strategy.launch(None if cfg.device is None else torch.device(cfg.device))
        loggers: list[LogWriter] = []
        try:
            if checkpoint is None and cfg.seed is not None:
                seed_everything(cfg.seed)
            self._setup(model, train, device)
            self._checks = FitChecks(model, train, valid, test, None if self.monitor is None else self.monitor.key)
            self._contexts = StepContexts(  # what balancers that declare `needs` get (FAMO, MoDo, Auto-λ, ...)
                self.balancer,
                self.model,
                valid,
                self._context_forward,
                self.device,
                distributed=self.strategy.world_size > 1,
                valid_split=cfg.valid_split,
            )
            if checkpoint is not None:
                self._restore(checkpoint)
            resume_step = self.step if checkpoint is not None else None
            if cfg.logging and self.is_main_process:
                loggers = build_loggers(cfg.log_writers, cfg.log_dir, resume_step)
            self.log_writer = loggers[0] if loggers else None
            with self.balancer.losses_checked():  # each step checks the loss values it reads (`_train_step`)
                while self.epoch < cfg.n_epochs and not self._should_stop():
                    epoch_losses = self._train_epoch(loggers)
                    self.balancer.epoch_end()
                    self.epoch += 1
                    self.strategy.epoch_end(self.model)
                    last = self.epoch == cfg.n_epochs
                    if self.epoch % cfg.evaluate_every == 0 or last:
                        self._evaluate(epoch_losses, valid, loggers)
                    if cfg.checkpointing and (self.epoch % cfg.checkpoint_every == 0 or last):
                        self._write_checkpoint(self._state, Path(cfg.checkpoint_dir) / "last.pt")
            if self.best_model is not None and cfg.restore_best:
                self.model.load_state_dict(self.best_model)
            scored = list({id(loader): loader for loader in valid + test}.values())  # a loader may be both
            final = self.strategy.score(self.model, scored) if scored else {}
            if not final and self.is_main_process:
                warnings.warn(_nothing_scored(self.model, scored, cfg), stacklevel=2)
            _log(loggers, final, self.step, self.epoch)
            return final
        finally:
            for logger in loggers:
                logger.close()
            self.strategy.teardown()

    @property
    def is_main_process(self) -> bool:
        """True in a single-process run and on rank 0: the process that logs and writes checkpoints."""
        return self.strategy.is_main

    def save(self, path: str | Path) -> None:
        """Write the whole training state (atomically) so that `fit(..., resume_from=path)` continues it.

        After `fit` the model holds its restored best weights (when a checkpoint metric
        is tracked); `checkpoint_dir/last.pt` holds the state at the end of training.
        In a multi-process run only rank 0 writes (every rank holds the same state).
        """
        if self._model is None:
            raise RuntimeError("Trainer.save: nothing to save yet; call fit(model, dataloaders) first")
        if self.is_main_process:
            save_checkpoint(self._state(), path)

    @classmethod
    def load(cls, path: str | Path, model: MultiTaskModel, **overrides: Any) -> Trainer:
        """A Trainer with a checkpoint's configuration; loads its weights into `model` and resumes on `fit`.

        Options that a checkpoint cannot hold (a custom optimizer class, a Balancer or
        BatchScheduler object) must be given again in `overrides`, which also replace
        saved options (e.g. `n_epochs` to train longer).
        """
        checkpoint = load_checkpoint(path)
        missing = [key for key in checkpoint["unsaved_config"] if key not in overrides]
        if missing:
            raise ConfigError(
                f"the run in {str(path)!r} used objects a checkpoint cannot hold for {missing}; "
                f"pass them again: Trainer.load(path, model, {missing[0]}=...)"
            )
        saved = {k: v for k, v in checkpoint["config"].items() if k not in checkpoint["unsaved_config"]}
        trainer = cls(**{**saved, **overrides})
        _check_model(model).load_state_dict(checkpoint["model"])
        trainer._pending = checkpoint
        return trainer

    # ------------------------------------------------------------------ one batch

    def _train_step(self, batches: Iterator[Any]) -> tuple[StepOutput, dict[str, float], BalanceResult, Any] | None:
        """One optimizer step on the next batch: (losses, their values, balancer result, dataset), or None when skipped."""
        optimizer, balancer, contexts, grad_clip = (
            self._optimizer,
            self._balancer,
            self._contexts,
            self.config.grad_clip,
        )
        if optimizer is None or balancer is None:
            raise RuntimeError("Trainer._train_step runs within fit")
        optimizer.zero_grad(set_to_none=True)
        out, dataset = self._forward(batches)
        if not out.losses:
            return None  # no task has a label in this batch: nothing to learn from it
        values = self._loss_values(out.losses)
        if not math.isfinite(sum(values.values())):  # a sum of finite values is finite unless it overflows
            nonfinite = [task for task, value in values.items() if not math.isfinite(value)]
            if nonfinite:
                self._nonfinite(f"the loss of task(s) {nonfinite}", dataset)
                return None
        if contexts.needs:
            contexts.begin(*self._batch, lr=optimizer.param_groups[0]["lr"])
        # The balancer's own finiteness check is off for the fit (`fit`): the values above were checked.
        result = self.strategy.backward(
            balancer,
            out.losses,
            shared_params=self.model.shared_parameters() if self._reads_shared and out.shared_reps is None else None,
            shared_reps=out.shared_reps,
        )
        if grad_clip is not None:
            norm = nn.utils.clip_grad_norm_(self._parameters, grad_clip)
            if not math.isfinite(norm.item()):  # a device sync, as `bool(torch.isfinite(norm))` would be
                self._nonfinite(f"the gradient of task(s) {list(out.losses)}", dataset)
                return None
        optimizer.step()
        if contexts.needs:
            contexts.after_step()  # FAMO: the batch's losses after the step
        if self.lr_scheduler is not None:
            self.lr_scheduler.step()
        self.step += 1
        return out, values, result, dataset

    @staticmethod
    def _loss_values(losses: dict[str, torch.Tensor]) -> dict[str, float]:
        """The loss values, for the finiteness check, the epoch means and the logs (one device sync)."""
        scalars = [loss if loss.numel() == 1 else loss.detach().sum() for loss in losses.values()]
        return dict(zip(losses, host_values(scalars)))

    def _forward(self, batches: Iterator[Any]) -> tuple[StepOutput, Any]:
        """The global batch's task losses (the strategy's) and the dataset of this process's batch."""
        return self.strategy.global_step(lambda: self._local_step(batches), self._task_names, self._loss_dtype)

    def _local_step(self, batches: Iterator[Any]) -> tuple[StepOutput, Any]:
        """This process's next batch through the model, its losses in the model's task order, and its dataset."""
        (X, Y), loader = next(batches)
        self._batch = ((X, Y), loader)
        return self._model_step(X, Y, loader.dataset), loader.dataset

    def _model_step(self, X: Any, Y: Any, dataset: Any) -> StepOutput:
        """`training_step` through the strategy, with each dataset's first batch checked against the model."""
        with self._checks.first_batch(dataset):
            X, Y = move_to_device(X, self.device), move_to_device(Y, self.device)
            if self._autocast is None:
                out = self.strategy.training_step(X, Y)
            else:
                with self._autocast:
                    out = self.strategy.training_step(X, Y)
        if len(out.losses) > 1:
            order = self._task_order
            out.losses = dict(sorted(out.losses.items(), key=lambda item: order.get(item[0], len(order))))
        return out

    def _context_forward(self, X: Any, Y: Any) -> StepOutput:
        """The global losses of another batch (a balancer's extra or post-step forward), as in a training step."""
        dataset = self._batch[1].dataset
        out, _ = self.strategy.global_step(
            lambda: (self._model_step(X, Y, dataset), dataset), self._task_names, self._loss_dtype
        )
        return out

    def _nonfinite(self, what: str, dataset: Any) -> None:
        """Apply `nonfinite_loss`: raise, naming the step and the batch's dataset, or skip the step."""
        if self.config.nonfinite_loss == "raise":
            raise FloatingPointError(
                f"{what} is not finite at step {self.step + 1} (epoch {self.epoch + 1}) on a batch of dataset "
                f"{dataset.name!r} (split {dataset.split!r}); check the inputs and labels, lower lr, "
                "or pass nonfinite_loss='skip' to skip such steps"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.skipped_steps += 1

    # ------------------------------------------------------------------ one epoch

    def _train_epoch(self, loggers: Sequence[Logger]) -> dict[str, float]:
        """Train on every batch the scheduler plans for this epoch; return the epoch's mean losses."""
        cfg = self.config
        self.model.train()
        self.batch_scheduler.set_epoch(self.epoch)
        set_epoch = getattr(self.model, "set_epoch", None)
        if set_epoch is not None:  # models with schedules of their own (LTB's temperature)
            if "epochs" in inspect.signature(set_epoch).parameters and getattr(self.model, "epochs", None) is None:
                set_epoch(self.epoch, epochs=cfg.n_epochs)  # a schedule without its own length follows the run's
            else:
                set_epoch(self.epoch)
        losses = _EpochLosses()
        bar = tqdm(
            total=self._batches_per_epoch,
            desc=f"Epoch {self.epoch + 1}/{cfg.n_epochs}",
            disable=not cfg.progress_bar or not self.is_main_process,
            leave=False,
        )
        batches = self.batch_scheduler.get_batches(self._train_loaders)
        self._contexts.start_epoch()
        param_groups, train_step, log_every = self.optimizer.param_groups, self._train_step, cfg.log_every
        for _ in range(self._batches_per_epoch):
            # the learning rate of this step, read before the step when the step would log
            lr = param_groups[0]["lr"] if loggers and (self.step + 1) % log_every == 0 else None
            done = train_step(batches)
            if done is not None:
                out, values, result, dataset = done
                losses.add(values, out.counts, dataset)
                if not bar.disable:  # drawn on the epoch's first step, then whenever tqdm redraws (`mininterval`)
                    bar.set_postfix_str(f"loss={losses.running:.4f}", refresh=losses.steps == 1)
                if lr is not None:
                    _log(loggers, _step_record(values, result, lr), self.step, self.epoch)
            if not bar.disable:
                bar.update()
        bar.close()
        return losses.means()

    def _evaluate(self, epoch_losses: dict[str, float], valid: list[DataLoader], loggers: Sequence[Logger]) -> None:
        """Score the validation loaders, log, and keep the best model by the checkpoint metric."""
        scores = {**epoch_losses, **(self.strategy.score(self.model, valid) if valid else {})}
        self.history.append({"epoch": self.epoch, **scores})
        self._checks.evaluated(scores, self.epoch)  # diverging losses, non-finite scores
        _log(loggers, scores, self.step, self.epoch)
        if self.monitor is not None and self.monitor.update(scores, self.epoch):
            self.best_model = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            if self.config.checkpointing:
                best = {"model": self.best_model, "epoch": self.epoch, "metric": self.monitor.best}
                self._write_checkpoint(lambda: best, Path(self.config.checkpoint_dir) / "best.pt")

    def _write_checkpoint(self, state: Callable[[], dict[str, Any]], path: Path) -> None:
        """Write `state()` on the main process (the strategy shares a failure with the others)."""
        self.strategy.run_on_main(lambda: save_checkpoint(state(), path), f"writing the checkpoint {str(path)!r}")

    def _should_stop(self) -> bool:
        return self.monitor is not None and self.monitor.should_stop

    # ------------------------------------------------------------------ set-up and state

    def _setup(self, model: MultiTaskModel, train: list[DataLoader], device: torch.device | None) -> None:
        """Fresh run state: device, balancer, the strategy's set-up, optimizer, batch scheduler, LR schedule, counters."""
        cfg = self.config
        model = _check_model(model)
        if device is not None:
            model.to(device)
        self._model = model
        self.device = _device_of(model)
        self._loss_dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
        self._task_names = list(model.task_names)
        self._task_order = {task: i for i, task in enumerate(self._task_names)}
        self._autocast = self._autocast_context()  # entered around every training forward (None: full precision)
        balancer = self._balancer = self._build_balancer(model.task_names).to(self.device)
        kind = type(balancer)  # a balancer that only weights the losses never reads the shared parameters
        self._reads_shared = kind._backward is not LossBalancer._backward or kind.backward is not Balancer.backward
        train = self.strategy.setup(model, balancer, train)
        optimizer = self._optimizer = build_optimizer(cfg, model.parameters(), balancer.parameters())
        self.strategy.setup_optimizer(optimizer)
        self._parameters = list(model.parameters())  # clipped each step (as the strategy's setup left them)
        if isinstance(cfg.batch_scheduler, BatchScheduler):
            batch_scheduler = cfg.batch_scheduler
        else:
            seed = cfg.seed if cfg.seed is not None else int(torch.randint(0, 2**62, ()).item())
            batch_scheduler = get_scheduler(cfg.batch_scheduler, seed=seed)
        self._batch_scheduler = batch_scheduler
        self._train_loaders = train
        self._batches_per_epoch = len(batch_scheduler.plan([len(loader) for loader in train]))
        if self._batches_per_epoch == 0:
            raise ConfigError("the training dataloaders hold no batch; check the train split's datasets")
        self.lr_scheduler = build_lr_scheduler(cfg, optimizer, self._batches_per_epoch)
        self.warmup_steps = warmup_batches(cfg, self._batches_per_epoch)
        tracked = cfg.checkpointing or cfg.early_stopping is not None
        self.monitor = MetricMonitor(*cfg.metric, cfg.checkpoint_runway, cfg.early_stopping) if tracked else None
        self.checkpointer = None
        if cfg.checkpointing and self.is_main_process:
            self.checkpointer = Checkpointer(
                evaluation_freq=cfg.evaluate_every,
                checkpoint_dir=cfg.checkpoint_dir,
                checkpoint_metric=cfg.checkpoint_metric,
                checkpoint_runway=cfg.checkpoint_runway,
                monitor=self.monitor,
            )
        self.best_model = None
        self.epoch = 0
        self.step = 0
        self.skipped_steps = 0
        self.history = []

    def _build_balancer(self, task_names: list[str]) -> Balancer:
        spec = self.config.weighting
        if isinstance(spec, Balancer):
            if spec.task_names is None:
                spec.task_names = list(task_names)
            elif set(spec.task_names) != set(task_names):
                raise ConfigError(
                    f"weighting: the balancer was built for tasks {spec.task_names} but the model has {task_names}"
                )
            return spec
        name, kwargs = (spec, {}) if isinstance(spec, str) else spec
        return get_balancer(name, tasks=list(task_names), **kwargs)

    def _autocast_context(self) -> torch.autocast | None:
        if self.config.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return None

    def _state(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "unsaved_config": self.config.unsaved_keys(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": None if self.lr_scheduler is None else self.lr_scheduler.state_dict(),
            "balancer": self.balancer.state_dict(),
            "batch_scheduler_seed": self.batch_scheduler.seed,
            "loader_seeds": self._loader_seeds,
            "rng": rng_state(),
            "counters": {"epoch": self.epoch, "step": self.step, "skipped_steps": self.skipped_steps},
            "monitor": self.monitor.state_dict() if self.monitor is not None else None,
            "best_model": self.best_model,
            "history": self.history,
        }

    def _restore(self, checkpoint: dict[str, Any]) -> None:
        """Put the run back in the state a checkpoint recorded (the random generators last).

        Nothing in a checkpoint depends on the number of ranks: a run resumes on any number.
        """
        _check_resume(checkpoint, self.config.to_dict())
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        if self.lr_scheduler is not None:
            self.lr_scheduler.load_state_dict(checkpoint["lr_scheduler"])
        self.balancer.load_state_dict(checkpoint["balancer"])
        self.batch_scheduler.seed = checkpoint["batch_scheduler_seed"]
        _set_loader_seeds(self._train_loaders, checkpoint["loader_seeds"])
        counters = checkpoint["counters"]
        self.epoch, self.step, self.skipped_steps = counters["epoch"], counters["step"], counters["skipped_steps"]
        if self.monitor is not None and checkpoint["monitor"] is not None:
            self.monitor.load_state_dict(checkpoint["monitor"])
            self.best_model = checkpoint["best_model"]
        self.history = list(checkpoint["history"])
        set_rng_state(checkpoint["rng"])

    @property
    def _loader_seeds(self) -> dict[str, int | None]:
        return {_loader_key(loader): getattr(loader, "seed", None) for loader in self._train_loaders}


def _check_resume(checkpoint: dict[str, Any], current: dict[str, Any]) -> None:
    """A resumed run keeps its checkpoint's balancer; a changed length under an LR schedule warns.

    A balancer's state (learned weights, running averages) belongs to its method, so another
    method is a `ConfigError`. An LR schedule is restored with the length it was planned for,
    so a different `n_epochs` does not stretch it: the warning says so.
    """
    saved = checkpoint["config"]
    if "weighting" not in checkpoint["unsaved_config"] and saved.get("weighting") != current.get("weighting"):
        raise ConfigError(
            f"resume: the checkpoint was trained with weighting={_method(saved.get('weighting'))}, not "
            f"{_method(current.get('weighting'))}; a balancer's state cannot move to another method: resume with the "
            "checkpoint's weighting, or start a new run"
        )
    scheduled = saved.get("lr_scheduler") != "constant" or saved.get("warmup_steps", 0)
    if scheduled and saved.get("n_epochs") != current.get("n_epochs"):
        warnings.warn(
            f"resume: the checkpoint's LR schedule (lr_scheduler={saved.get('lr_scheduler')!r}, "
            f"warmup_steps={saved.get('warmup_steps', 0)}) was planned for n_epochs={saved.get('n_epochs')}; "
            f"resuming with n_epochs={current.get('n_epochs')} continues that schedule unchanged, it does not "
            "stretch it. Resume with the same n_epochs, or start a new run for another length",
            stacklevel=3,
        )


def _method(weighting: Any) -> str:
    """`'uw'` or `'cagrad' {'c': 0.4}` from a saved weighting (a name, or [name, options])."""
    if isinstance(weighting, (list, tuple)) and len(weighting) == 2:
        name, options = weighting
        return f"{name!r} {options}" if options else repr(name)
    return repr(weighting)


class _EpochLosses:
    """Running means of one epoch's training losses, as scores.

    `model/all/train/loss` is the mean over steps of Σ_t L_t (unweighted, so comparable
    across balancers); `task/dataset/split/loss` the mean of each task's loss on each
    training dataset, weighted by its labelled rows when the model reports `counts`.
    """

    def __init__(self) -> None:
        self.total = 0.0
        self.steps = 0
        self.sums: dict[str, list[float]] = {}
        self._sums: dict[tuple[str, int], list[float]] = {}  # the same sums, by (task, id(dataset))

    def add(self, values: dict[str, float], counts: dict[str, int], dataset: Any) -> None:
        self.total += sum(values.values())
        self.steps += 1
        for task, value in values.items():
            n = counts.get(task, 1)
            acc = self._sums.get((task, id(dataset)))
            if acc is None:
                acc = self._sums[task, id(dataset)] = self.sums.setdefault(
                    f"{task}/{dataset.name}/{dataset.split}/loss", [0.0, 0.0]
                )
            acc[0] += value * n
            acc[1] += n

    @property
    def running(self) -> float:
        return self.total / max(self.steps, 1)

    def means(self) -> dict[str, float]:
        if self.steps == 0:
            return {}
        return {"model/all/train/loss": self.running, **{k: s / n for k, (s, n) in self.sums.items()}}


def _step_record(values: dict[str, float], result: BalanceResult, lr: float) -> dict[str, float]:
    record = {"train/loss": sum(values.values()), "train/lr": lr}
    record.update({f"train/loss/{task}": value for task, value in values.items()})
    record.update({f"train/weight/{task}": float(w) for task, w in result.weights.items()})
    record.update({f"train/{name}": float(v) for name, v in result.stats.items()})
    return record


def _nothing_scored(model: MultiTaskModel, scored: list[DataLoader], cfg: TrainerConfig) -> str:
    """Why `fit` returns no score, and what to change."""
    if not scored:
        return (
            f"fit has no metric to report: no dataloader is of a validation or test split "
            f"({', '.join(map(repr, (*cfg.valid_split, *cfg.test_split)))}); "
            "pass validation/test dataloaders (their dataset's split) to fit, or score the model yourself"
        )
    if not model.scorers():
        return (
            f"fit has no metric to report: {type(model).__name__} has no Scorer for any task; give it metrics "
            "(e.g. an architecture's metrics={task: mtlkit.Scorer(['accuracy'])}, a Task's scorer)"
        )
    return "fit has no metric to report: no validation/test row is labelled for a task that has a Scorer"


def _log(loggers: Sequence[Logger], values: dict[str, float], step: int, epoch: int) -> None:
    for logger in loggers:
        logger.log(values, step, epoch)


def _split_loaders(
    dataloaders: Sequence[DataLoader], cfg: TrainerConfig
) -> tuple[list[DataLoader], list[DataLoader], list[DataLoader]]:
    """The train, validation and test loaders, by exact `dataset.split` name."""
    train: list[DataLoader] = []
    valid: list[DataLoader] = []
    test: list[DataLoader] = []
    for i, loader in enumerate(dataloaders):
        dataset: Any = getattr(loader, "dataset", None)
        if not hasattr(dataset, "split") or not hasattr(dataset, "name"):
            raise TypeError(
                f"dataloader #{i} has no dataset.name/dataset.split: "
                "use mtlkit.DictDataLoader(mtlkit.DictDataset(name, split, X_dict, Y_dict))"
            )
        roles = [
            group
            for group, splits in ((train, cfg.train_split), (valid, cfg.valid_split), (test, cfg.test_split))
            if dataset.split in splits
        ]
        if not roles:
            raise ConfigError(
                f"dataloader of dataset {dataset.name!r} has split {dataset.split!r}, which is none of "
                f"train_split={list(cfg.train_split)}, valid_split={list(cfg.valid_split)}, "
                f"test_split={list(cfg.test_split)}; rename the split or add it to one of these options"
            )
        for group in roles:
            group.append(loader)
    if not train:
        raise ConfigError(f"no dataloader has a training split {list(cfg.train_split)}; nothing to train on")
    return train, valid, test


def _check_model(model: object) -> TrainableModel:
    """`model` as what `fit` trains, or a TypeError that names what it lacks."""
    if not isinstance(model, nn.Module) or not isinstance(model, MultiTaskModel):
        missing = [
            name
            for name in ("task_names", "training_step", "shared_parameters", "task_outputs", "scorers")
            if not hasattr(model, name)
        ]
        raise TypeError(
            f"Trainer.fit needs an nn.Module implementing mtlkit.protocol.MultiTaskModel; "
            f"{type(model).__name__} {'lacks ' + ', '.join(missing) if missing else 'is not an nn.Module'}"
        )
    return cast("TrainableModel", model)


def _fitted(value: _T | None, name: str) -> _T:
    """`Trainer.<name>`, which `fit` sets."""
    if value is None:
        raise RuntimeError(f"Trainer.{name} is set by fit: call fit(model, dataloaders) first")
    return value


def _device_of(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    if parameter is None:
        raise ValueError(f"{type(model).__name__} has no parameters to train")
    return parameter.device


def _loader_key(loader: DataLoader) -> str:
    dataset: Any = loader.dataset  # a DictDataset (`_split_loaders` checked its name and split)
    return f"{dataset.name}/{dataset.split}"


def _set_loader_seeds(train: list[DataLoader], seeds: dict[str, int | None]) -> None:
    """Give the training loaders the shuffling seeds of the checkpointed run."""
    current = {_loader_key(loader): loader for loader in train}
    if set(current) != set(seeds):
        raise ValueError(
            f"resume with the training dataloaders of the checkpointed run: it trained on {sorted(seeds)}, "
            f"this run on {sorted(current)}"
        )
    for key, seed in seeds.items():
        if seed is not None:
            current[key].seed = seed
