"""The optimizer and the learning-rate schedule that a `TrainerConfig` describes."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LinearLR, LRScheduler, SequentialLR

from mtlkit.errors import ConfigError
from mtlkit.training.config import LR_SCHEDULERS, TrainerConfig, resolve_lr_scheduler, resolve_optimizer


def build_optimizer(
    config: TrainerConfig, model_params: Iterable[nn.Parameter], balancer_params: Iterable[nn.Parameter]
) -> Optimizer:
    """The configured optimizer over the model's parameters (with weight decay `l2`) and the balancer's (without)."""
    model_params = _unique(model_params)
    seen = {id(p) for p in model_params}
    balancer_params = [p for p in _unique(balancer_params) if id(p) not in seen]
    groups: list[dict] = [{"params": model_params}]
    if balancer_params:
        groups.append({"params": balancer_params, "weight_decay": 0.0})
    cls = resolve_optimizer(config.optimizer)
    make: Callable[..., Optimizer] = (
        cls  # concrete optimizers take (params, lr=..., **options); the base class does not
    )
    decay = {"weight_decay": config.l2} if config.l2 else {}  # optimizers without weight decay stay usable
    try:
        return make(groups, lr=config.lr, **decay, **config.optimizer_kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"could not build optimizer {cls.__name__} from the Trainer options: {err}") from err


def warmup_batches(config: TrainerConfig, batches_per_epoch: int) -> int:
    """The number of warm-up batches (`warmup_steps` in batches or epochs), at most the whole run."""
    total = config.n_epochs * batches_per_epoch
    unit = batches_per_epoch if config.warmup_unit == "epochs" else 1
    warmup = round(config.warmup_steps * unit)
    if warmup > total:
        raise ConfigError(
            f"warm-up of {warmup} batches is longer than the run's {total} batches "
            f"({config.n_epochs} epochs x {batches_per_epoch}); lower warmup_steps"
        )
    return warmup


def build_lr_scheduler(config: TrainerConfig, optimizer: Optimizer, batches_per_epoch: int) -> LRScheduler | None:
    """The configured schedule, stepped once per optimizer step, after an optional linear warm-up.

    None for lr_scheduler='constant' without warm-up (the learning rate never changes).
    The defaults (Snorkel's gamma and step_size; LinearLR to 0 and CosineAnnealingLR
    over the steps after the warm-up) yield to `lr_scheduler_kwargs`.
    """
    total = config.n_epochs * batches_per_epoch
    warmup = warmup_batches(config, batches_per_epoch)
    cls = resolve_lr_scheduler(config.lr_scheduler)
    kwargs = {**_defaults(config.lr_scheduler, total - warmup), **config.lr_scheduler_kwargs}
    name = "warm-up" if cls is None else cls.__name__
    try:
        schedule = None if cls is None else cls(optimizer, **kwargs)
        if warmup == 0:
            return schedule
        # Factor (i + 1) / (W + 1) at warm-up step i, reaching 1 when the schedule starts.
        ramp = LinearLR(optimizer, start_factor=1 / (warmup + 1), end_factor=1.0, total_iters=warmup)
        return ramp if schedule is None else SequentialLR(optimizer, [ramp, schedule], milestones=[warmup])
    except (TypeError, ValueError) as err:
        raise ConfigError(f"could not build lr_scheduler {name} from the Trainer options: {err}") from err


def _defaults(name: object, steps: int) -> dict:
    if name == "linear":
        return {"start_factor": 1.0, "end_factor": 0.0, "total_iters": steps}
    if name == "cosine":
        return {"T_max": steps}
    return dict(LR_SCHEDULERS[name][1]) if name in LR_SCHEDULERS else {}  # Snorkel's gamma, step_size


def _unique(params: Iterable[nn.Parameter]) -> list[nn.Parameter]:
    seen: set[int] = set()
    out = []
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out
