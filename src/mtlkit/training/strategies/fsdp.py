"""Fully sharded data-parallel training (FSDP2, `torch.distributed.fsdp.fully_shard`).

Every rank computes what one process computes on the global batch, as under
`DDPStrategy` (whose step, loss all-reduce, failure sharing and evaluation this strategy
reuses), but each rank holds only its shard (1/world_size, along dim 0) of every
parameter, gradient and optimizer state between steps.

- **Units.** FSDP2 all-gathers a sharded module's parameters before its `forward` and
  frees them after (and again around its backward). The Trainer calls
  `model.training_step` and `model.task_outputs`, not `forward`: the strategy runs
  `training_step` inside the root's FSDP hooks, and `task_outputs` is registered as a
  forward method of the root (`register_fsdp_forward_method`). By default the model is
  the only unit: whole during each step, sharded between steps. That holds for any
  model, whichever submodules each rank runs (mtlkit's architectures skip the heads of
  tasks without a labelled row in the rank's batch). `FSDPStrategy(units=[...])` makes
  submodules units of their own (e.g. each block of a deep trunk), whole only inside
  their own `forward`; every rank must then run them in the same order in every step,
  and the model must not read their parameters outside their `forward`.
- **Balancers.** Loss-weighting balancers: one backward, whose gradients FSDP
  reduce-scatters (averages) as it runs. Gradient methods at a shared representation
  (`rep_grad` models): the engine takes this rank's rows at the representation, sums
  the T×T Gramian over ranks, then runs one backward (as under DDP with
  `reduces_in_backward`), which FSDP reduce-scatters. Gradient methods on the shared
  parameters (the model one unit, so its parameters are whole after the forward):
  methods defined by `weights(G)` take G from each rank's shard of the task gradients,
  one backward per task reduce-scattered by FSDP and one T×T all-reduce
  (`_backward_sharded_gramian`); the others (and all with `sharded_gramian=False`) take
  the whole Jacobian with FSDP's reduce-scatter off, the engine making the shared
  gradients global through the collectives, as under DDP (`_backward_on_parameters`).
  With named units they are refused (`ConfigError`).
- **Evaluation.** Each rank scores its shard as under DDP; a rank with fewer batches
  than another runs forwards on a spare batch (results dropped) until all ranks have
  run as many, so every all-gather has a partner.
- **State.** `model.state_dict()` and `optimizer.state_dict()` return full (unsharded)
  CPU tensors keyed as in one process, and their `load_state_dict` accepts them, so
  checkpoints are those of a single process (written by rank 0, atomically) and resume
  under any strategy. At the end of `fit` the model is put back as it was before
  `fit` (its own classes and parameter objects, holding the trained values), and so
  are the optimizer's parameters and state.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.distributed._composable_state import _module_state_mapping
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard, register_fsdp_forward_method
from torch.distributed.tensor import DTensor, distribute_tensor
from torch.utils.data import DataLoader
from torch.utils.hooks import RemovableHandle

from mtlkit import metrics
from mtlkit.data import move_to_device
from mtlkit.errors import ConfigError
from mtlkit.protocol import MultiTaskModel, StepOutput
from mtlkit.training.distributed import shard_evaluation_loader
from mtlkit.training.strategies.ddp import DDPStrategy, _as_module
from mtlkit.weighting import Balancer, BalanceResult, GradientBalancer, LossBalancer
from mtlkit.weighting.base import (
    _check_finite_rows,
    _flatten_params,
    _innermost,
    _sees_only_gramian,
    gradient_step_result,
)
from mtlkit.weighting.context import EXTRA_TRAIN_BATCH, VALID_BATCH, needs_of
from mtlkit.weighting.jacobian import gramian_root

# What `fully_shard` and `register_fsdp_forward_method` add to a module's attributes.
_ADDED_ATTRIBUTES = frozenset({"_is_fsdp_managed_module", "_fsdp_use_orig_params", "task_outputs"})
_STATE_KEY_PREFIX = "__composable_api_state_key"


class FSDPStrategy(DDPStrategy):
    """One rank of a torch.distributed run, training a model sharded by FSDP2 (see the module docstring).

    `units`: the names (as in `model.named_modules()`) of submodules to shard as units of
    their own, each gathered only around its own forward and backward; every rank must
    run them in the same order in every step. None: the model is one unit (gathered for
    the whole step), which holds every parameter outside the named units.
    `sharded_gramian`: whether a method defined by `weights(G)` on the shared parameters
    takes G from each rank's shard of the task gradients (`_backward_sharded_gramian`: T×P/N
    numbers per rank); False: the whole T×P Jacobian on every rank, as under DDP
    (`_backward_on_parameters`), which the other gradient methods on the shared
    parameters always use. `backend`, `timeout` and `shard_jacobian` (that path) are
    `DDPStrategy`'s.
    """

    def __init__(
        self,
        backend: str | None = None,
        timeout: float = 600.0,
        units: Sequence[str] | None = None,
        shard_jacobian: bool | None = None,
        sharded_gramian: bool = True,
    ) -> None:
        super().__init__(backend, timeout, shard_jacobian)
        self.units = None if units is None else list(units)
        self.sharded_gramian = sharded_gramian
        self._sharded: _ShardedModel | None = None
        self._optimizer: torch.optim.Optimizer | None = None
        self._optimizer_hooks: list[RemovableHandle] = []
        self._frozen: tuple[dict[str, Any], dict[str, Any] | None] | None = None
        # Per step (see `global_step`): unit outputs, the zero term, which units the losses reached.
        self._outputs: list[tuple[int, Tensor]] = []
        self._touch: Tensor | None = None
        self._used: Tensor | None = None
        self._own: list[str] = []
        self._groups: list[list[str]] = []
        self._on_parameters = False  # a gradient method on the shared parameters (set by `_wrap`)
        self._by_shards = False  # ... that takes G from the ranks' shards of the task gradients (set by `_wrap`)
        self._shards: dict[str, Tensor] = {}  # the model's sharded parameters (DTensors), by name

    # ------------------------------------------------------------------ set-up

    def setup(self, model: MultiTaskModel, balancer: Balancer, train: Sequence[DataLoader]) -> list[DataLoader]:
        shards = super().setup(model, balancer, train)  # rank 0's weights everywhere, then `_wrap` shards
        # FSDP reduce-scatters every gradient of the next backward, except for a gradient method
        # on the shared parameters (see `_backward_on_parameters`).
        self.reduces_in_backward = not self._on_parameters
        return shards

    def _wrap(self, model: MultiTaskModel, balancer: Balancer) -> Callable[[Any, Any], StepOutput]:
        extra = needs_of(balancer) & {EXTRA_TRAIN_BATCH, VALID_BATCH}
        if extra:
            raise ConfigError(
                f"strategy='fsdp' cannot run {type(balancer).__name__}: it draws {', '.join(sorted(extra))}es during "
                "the backward, whose forwards would meet the sharded parameters; use strategy='ddp' for it"
            )
        self._on_parameters = not isinstance(balancer, LossBalancer) and not getattr(model, "rep_grad", False)
        if self._on_parameters and self.units:
            name = type(balancer).__name__
            raise ConfigError(
                f"strategy='fsdp' with units={self.units} cannot run the gradient method {name} on the shared "
                "parameters: their per-task gradients need the whole parameters after the forward, which named "
                f"units free. Leave units unset (the model is then one unit), train {type(model).__name__} with "
                "rep_grad=True, or use strategy='ddp'"
            )
        self._by_shards = self._on_parameters and self.sharded_gramian and _gramian_only(balancer)
        module = _as_module(model)
        units = self._unit_names(module)
        self._sharded = _ShardedModel(module, units, init_device_mesh(self.device.type, (self.world_size,)))
        self._shards = dict(module.named_parameters())  # between steps, the parameters are the sharded ones
        # (torch marks a hook function it registers: a bound method cannot take the mark, a partial can)
        self._sharded.module.register_state_dict_post_hook(functools.partial(FSDPStrategy._full_model_state, self))
        self._sharded.module.register_load_state_dict_pre_hook(
            functools.partial(FSDPStrategy._sharded_model_state, self)
        )
        self._step_of = model.training_step
        for i, unit in enumerate(self._sharded.units):
            unit.register_forward_hook(functools.partial(self._record_output, i))
        self._groups, self._own = _owned_parameters(module, units)
        return self._training_step

    def _training_step(self, X: Any, Y: Any) -> StepOutput:
        """`training_step` inside the root's FSDP hooks; notes which units the losses reach (see `global_step`)."""
        if self._sharded is None:
            raise RuntimeError("FSDPStrategy.training_step before setup")
        root = self._sharded.module
        state = cast(FSDPModule, root)._get_fsdp_state()
        self._outputs = []
        (X, Y), _ = state._pre_forward(root, (X, Y), {})
        out = self._step_of(X, Y)
        units = len(self._sharded.units)
        candidates = self._outputs + [
            (units + j, p)
            for j, p in enumerate(root.get_parameter(name) for name in self._own)
            if p is not None and not isinstance(p, DTensor)
        ]
        reached = _Reached(list(out.losses.values()))
        used = torch.zeros(len(self._groups), dtype=torch.float64, device=self.device)
        unreached = []
        for group, tensor in candidates:
            if reached(tensor):
                used[group] = 1.0
            elif not self._by_shards:
                unreached.append(tensor)
        if self._by_shards and candidates:
            # The anchor of the per-task zero terms (`_backward_sharded_gramian`): an output of the root's
            # forward, so that a backward through it runs FSDP's backward hooks on every rank.
            unreached = [min((tensor for _, tensor in candidates), key=lambda tensor: tensor.numel())]
        self._used, self._touch = used, (_ZeroTouch.apply(*unreached) if unreached else None)
        state._post_forward(root, (X, Y), (*out.losses.values(), self._touch))
        self._outputs = []
        return out

    def _record_output(self, unit: int, module: nn.Module, inputs: Any, output: Any) -> None:
        self._outputs.extend((unit, t) for t in _tensors(output) if t.requires_grad)

    def global_step(
        self, local_step: Callable[[], tuple[StepOutput, Any]], task_names: list[str], loss_dtype: torch.dtype
    ) -> tuple[StepOutput, Any]:
        """`DDPStrategy.global_step`, with a zero term on the first loss that reaches every unit this rank ran.

        FSDP reduce-scatters a unit's gradients when the backward reaches it, and only
        then; a unit (or a parameter of the model's own unit) that no local loss reaches
        (a head without a labelled row on this rank; every unit, on a rank without one)
        would be reduced out of step with the other ranks, or never. The zero term (value
        and gradient exactly 0) makes every rank's backward reach all of them. One
        all-reduce of a flag per unit and per parameter of the model's own unit then tells
        which no rank's loss reached: `backward` leaves their gradients None, as one
        process would. (With the sharded Gramian, each task's backward gets a zero term of
        its own instead: `_backward_sharded_gramian`.)
        """
        self._touch = self._used = None
        out, dataset = super().global_step(local_step, task_names, loss_dtype)
        losses = _GlobalLosses(out.losses)
        if self._used is not None:
            self.all_reduce_sum(self._used, "losses")
            losses.unused = [i for i, used in enumerate(self._used.tolist()) if used == 0]
        if self._by_shards:
            losses.touch = self._touch  # added to every task's loss (`_backward_sharded_gramian`)
        elif self._touch is not None and losses:
            first = next(iter(losses))
            losses[first] = losses[first] + self._touch.to(losses[first].dtype)
        self._touch = self._used = None
        out.losses = losses
        return out, dataset

    def backward(
        self,
        balancer: Balancer,
        losses: dict[str, Tensor],
        shared_params: Sequence[Tensor] | None,
        shared_reps: list[Tensor] | None,
    ) -> BalanceResult:
        """`DDPStrategy.backward`; the parameters of units no rank's loss reached keep no gradient."""
        unused = losses.unused if isinstance(losses, _GlobalLosses) else []
        if self._by_shards and shared_params is not None and isinstance(losses, _GlobalLosses):
            result = self._backward_sharded_gramian(cast(GradientBalancer, balancer), losses, shared_params)
        elif self._on_parameters and shared_params is not None:
            result = self._backward_on_parameters(balancer, losses, shared_params)
        else:
            result = super().backward(balancer, losses, shared_params, shared_reps)
        if unused and self._sharded is not None:
            params = dict(self._sharded.module.named_parameters())
            for group in unused:
                for name in self._groups[group]:
                    params[name].grad = None
        return result

    def _backward_sharded_gramian(
        self, balancer: GradientBalancer, losses: _GlobalLosses, shared_params: Any
    ) -> BalanceResult:
        """A method defined by `weights(G)` on the shared parameters, from each rank's shard of the task gradients.

        For each task t, one backward of L_t plus a zero term (value and gradient 0) on the
        parameters this rank's L_t does not reach and on `losses.touch`, an output of the
        root's forward: every rank's backward then runs FSDP's hooks and reaches every
        parameter, so that FSDP's reduce-scatters pair up. Each backward has FSDP's
        reduce-scatter on: each rank then holds its shard of the global ∇L_t
        (the surrogate losses of `global_step` give each rank its share, FSDP averages the
        shares). The shards of the shared parameters' gradients are kept (T × P/N numbers)
        and their `.grad` reset; the task-specific parameters' sharded `.grad` accumulates
        Σ_t ∇L_t, their unweighted task gradients, as in one process. The partial Gramians
        of the kept shards are summed in one T×T all-reduce: the exact global G, the same on
        every rank, from which the method's weights w come (with the global losses, for
        methods whose weights also depend on them). Each rank then writes Σ_t w_t (its shard
        of ∇L_t) into its shared parameters' sharded `.grad`: exact, and cheaper than one more
        backward of Σ_t w_t L_t (no backward, no communication; the shards are needed for G
        anyway). One scalar all-reduce gives the update's norm (the `grad_norm` statistic, and
        a finiteness check that every rank takes alike).
        """
        if self._sharded is None:
            raise RuntimeError("FSDPStrategy.backward before setup")
        _, names, index, active = balancer._active_losses(losses)
        if not active:
            raise ValueError("no task loss requires grad: nothing to backpropagate")
        if not balancer._losses_checked:
            _check_finite_rows(torch.stack(active).detach().unsqueeze(1), names, "loss")
        root = self._sharded.module
        given = {id(p) for p in _flatten_params(shared_params)}
        whole = [p for p in root.parameters() if p.requires_grad]  # (whole during the step)
        shared_names = [name for name, p in root.named_parameters() if id(p) in given]
        shared = [self._shards[name] for name in shared_names]
        unused = {name for group in losses.unused for name in self._groups[group]}
        reached = any(name not in unused for name in shared_names)
        prior = [p.grad for p in shared]
        sizes = [_local(p).numel() for p in shared]
        # T × this rank's shard of the shared parameters: row t, the shards of ∇L_t.
        J = active[0].new_zeros(len(active), sum(sizes), dtype=shared[0].dtype if shared else active[0].dtype)
        try:
            for p in shared:
                p.grad = None
            cast(FSDPModule, root).set_reshard_after_backward(False)  # whole until the last task's backward
            for t, loss in enumerate(active):
                missing = [p for p in whole if not _Reached([loss])(p)]
                total = loss if losses.touch is None else loss + _ZeroTouch.apply(losses.touch, *missing).to(loss.dtype)
                total.backward(retain_graph=t < len(active) - 1)
                for p, row in zip(shared, J[t].split(sizes)):
                    if isinstance(p.grad, DTensor):
                        row.copy_(p.grad._local_tensor.reshape(-1))
                    p.grad = None
            G = (J @ J.T).contiguous()
            self.all_reduce_sum(G, "gramian")
            if reached:
                _check_finite_rows(G.diagonal().unsqueeze(1), names, "gradient")
                # Any matrix with Gramian G stands in for the global J: the method sees G only.
                _, weights = balancer._combine_checked(gramian_root(G), names, active, index)
                g = weights.detach().to(J.dtype) @ J
            else:  # no rank's loss reaches the shared part: each task gets its own gradient, as in one process
                weights, g = None, J.new_zeros(0)
            norm = (g * g).sum().reshape(1)
            self.all_reduce_sum(norm, "update")
            if not bool(torch.isfinite(norm)):
                raise FloatingPointError(
                    f"{type(balancer).__name__} produced a non-finite update from finite task gradients "
                    f"(tasks {names}); this is a bug in the method, please report it"
                )
        except BaseException:
            for p in self._shards.values():
                p.grad = None
            raise
        finally:
            cast(FSDPModule, root).set_reshard_after_backward(True)
            cast(FSDPModule, root).reshard()
        if reached:
            for p, part, before in zip(shared, g.split(sizes), prior):
                assert isinstance(p, DTensor)  # (every parameter of a `fully_shard`ed module)
                grad = DTensor.from_local(
                    part.view_as(_local(p)),
                    p.device_mesh,
                    p.placements,
                    run_check=False,
                    shape=p.shape,
                    stride=p.stride(),
                )
                p.grad = grad if before is None else before + grad  # (`backward` drops those no rank reached)
        self.average_gradients(self._balancer_params)
        return gradient_step_result(names, active, weights, norm.sqrt())

    def _backward_on_parameters(
        self, balancer: Balancer, losses: dict[str, Tensor], shared_params: Sequence[Tensor]
    ) -> BalanceResult:
        """A gradient method on the shared parameters, on the whole parameters of the model's one unit.

        The root keeps its parameters whole after the forward, so `shared_params` are the
        whole ones. FSDP's reduce-scatter is off for this backward: the engine makes the
        shared parameters' gradients global through the collectives (the averaged J, or on
        NCCL each rank's partial Gramian of its slice of J's columns, summed in one T×T
        all-reduce), as under DDP; one all-reduce averages the other gradients; each rank
        then keeps its shard of every gradient, and the parameters are sharded again.
        """
        if self._sharded is None:
            raise RuntimeError("FSDPStrategy.backward before setup")
        root = cast(FSDPModule, self._sharded.module)
        root.set_requires_gradient_sync(False)
        root.set_reshard_after_backward(False)
        try:
            result = balancer.backward(losses, shared_params=shared_params, collectives=self)
        finally:
            root.set_requires_gradient_sync(True)
            root.set_reshard_after_backward(True)
        whole = dict(self._sharded.module.named_parameters())
        shared = {id(p) for p in shared_params}
        self.average_gradients([p for p in whole.values() if id(p) not in shared] + self._balancer_params)
        grads = {name: p.grad for name, p in whole.items()}
        for p in whole.values():
            p.grad = None
        root.reshard()
        for name, p in self._sharded.module.named_parameters():
            grad = grads.get(name)
            p.grad = None if grad is None else _shard_like(grad, p) if isinstance(p, DTensor) else grad
        return result

    def _unit_names(self, module: nn.Module) -> list[str]:
        if self.units is None:
            return []
        names = dict(module.named_modules())
        unknown = [name for name in self.units if name not in names or name == ""]
        if unknown:
            raise ConfigError(
                f"FSDPStrategy(units=...): {type(module).__name__} has no submodule {unknown}; its submodules are "
                f"{[name for name in names if name][:20]}"
            )
        return self.units

    def setup_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Make the optimizer's `state_dict`/`load_state_dict` speak full tensors, as in one process."""
        self._optimizer = optimizer
        self._optimizer_hooks = [
            optimizer.register_state_dict_post_hook(functools.partial(FSDPStrategy._full_optimizer_state, self)),
            optimizer.register_load_state_dict_pre_hook(functools.partial(FSDPStrategy._sharded_optimizer_state, self)),
        ]

    def teardown(self) -> None:
        """Put the model (and the optimizer's parameters and state) back as they were before `fit`, trained."""
        sharded, optimizer = self._sharded, self._optimizer
        self._sharded, self._optimizer, self._frozen = None, None, None
        for handle in self._optimizer_hooks:
            handle.remove()
        self._optimizer_hooks = []
        if sharded is not None:
            originals = sharded.restore()
            if optimizer is not None:
                _restore_optimizer(optimizer, originals)
        super().teardown()

    # ------------------------------------------------------------------ evaluation and writing

    def _predict_shard(self, model: MultiTaskModel, loader: DataLoader, scorers: dict[str, Any]) -> dict[str, Any]:
        """`DDPStrategy`'s prediction of this rank's shard, then forwards on a spare batch until every rank ran as many.

        Every rank knows every rank's number of batches (the shards are fixed strides), so
        no collective is needed to agree on it.
        """
        shard = shard_evaluation_loader(loader, self.world_size, self.rank)
        results = metrics.predict(model, shard, return_preds=True, scorers=scorers)
        missing = max(len(shard_evaluation_loader(loader, self.world_size, r)) for r in range(self.world_size))
        missing -= len(shard)
        dataset: Any = loader.dataset  # a DictDataset (its labels name the tasks `metrics.predict` asks for)
        tasks = list(dict.fromkeys(metrics.labels_to_tasks(dataset.Y_dict.keys(), model.task_names).values()))
        if missing > 0 and tasks:
            X, _ = next(iter(loader))  # a spare batch; its outputs are dropped
            X = move_to_device(X, self.device)
            module = _as_module(model)
            was_training = module.training
            module.eval()
            try:
                with torch.no_grad():
                    for _ in range(missing):
                        model.task_outputs(X, tasks)
            finally:
                module.train(was_training)
        return results

    def run_on_main(self, write: Callable[[], None], what: str) -> None:
        """Gather the full model and optimizer state on every rank (collectives), then rank 0 writes."""
        if self._sharded is None:
            super().run_on_main(write, what)
            return
        model_state = self._sharded.module.state_dict()
        optimizer_state = None if self._optimizer is None else self._optimizer.state_dict()
        self._frozen = (model_state, optimizer_state)
        try:
            super().run_on_main(write, what)
        finally:
            self._frozen = None

    # ------------------------------------------------------------------ state-dict hooks

    def _full_model_state(self, module: nn.Module, state: dict[str, Any], prefix: str, metadata: Any) -> None:
        if self._frozen is not None:  # inside `run_on_main`: rank 0 writes what every rank gathered
            state.clear()
            state.update(self._frozen[0])
            return
        for key, value in state.items():
            state[key] = _full(value)

    def _sharded_model_state(self, module: nn.Module, state: dict[str, Any], prefix: str, *_: Any) -> None:
        current = _registered_tensors(module)
        for key, value in list(state.items()):
            target = current.get(key[len(prefix) :]) if key.startswith(prefix) else None
            if isinstance(target, DTensor) and not isinstance(value, DTensor):
                state[key] = _shard_like(value, target)

    def _full_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> dict[str, Any]:
        if self._frozen is not None and self._frozen[1] is not None:
            return self._frozen[1]
        return {**state, "state": {i: {k: _full(v) for k, v in s.items()} for i, s in state["state"].items()}}

    def _sharded_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> dict[str, Any]:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        sharded: dict[Any, Any] = {}
        for i, entries in state["state"].items():
            p = params[int(i)]
            sharded[i] = {
                k: _shard_like(v, p)
                if isinstance(p, DTensor)
                and isinstance(v, Tensor)
                and not isinstance(v, DTensor)
                and v.shape == p.shape
                else v
                for k, v in entries.items()
            }
        return {**state, "state": sharded}


class _GlobalLosses(dict[str, Tensor]):
    """The global batch's losses (`global_step`), with the parameter groups no rank's loss reached (`unused`)
    and, when every task's backward must reach every parameter, the zero term that does (`touch`)."""

    def __init__(self, losses: dict[str, Tensor]) -> None:
        super().__init__(losses)
        self.unused: list[int] = []
        self.touch: Tensor | None = None  # with `_by_shards`: the zero term that reaches every parameter


class _ShardedModel:
    """A model sharded in place by `fully_shard`, and what `restore` needs to undo it.

    FSDP2 has no inverse of `fully_shard`; `restore` puts back what it changed: each
    module's class, the hooks and attributes it added, the FSDP state it registered,
    and the model's own parameter objects (filled with the trained values).
    """

    def __init__(self, module: nn.Module, units: list[str], mesh: Any) -> None:
        self.module = module
        modules = dict(module.named_modules())
        self._classes = {name: type(m) for name, m in modules.items()}
        self._attributes = {name: set(vars(m)) for name, m in modules.items()}
        self._hooks = {name: {key: set(hooks) for key, hooks in _hook_dicts(m)} for name, m in modules.items()}
        self._parameters = {
            name: dict(m._parameters)
            for name, m in modules.items()
            if any(p is not None for p in m._parameters.values())
        }
        self.units = [modules[name] for name in units]
        for unit in self.units:
            fully_shard(unit, mesh=mesh)
        fully_shard(module, mesh=mesh)
        if hasattr(module, "task_outputs"):  # (`training_step` goes through `FSDPStrategy._training_step`)
            register_fsdp_forward_method(module, "task_outputs")

    def restore(self) -> dict[int, nn.Parameter]:
        """Undo `fully_shard` on every module (a collective: every rank calls it); {id(sharded param): original}."""
        for m in (self.module, *self.units):
            if isinstance(m, FSDPModule):
                # Sharded parameters on every rank, also after a failed step (the root keeps its
                # parameters whole after a forward, and `reshard` skips a unit left mid-forward).
                m.set_reshard_after_forward(True, recurse=False)
                m.reshard()
        modules = dict(self.module.named_modules())
        originals: dict[int, nn.Parameter] = {}
        with torch.no_grad():
            for name, params in self._parameters.items():
                m = modules[name]
                for key, original in params.items():
                    current = m._parameters.get(key)
                    if original is None or current is None or current is original:
                        continue
                    original.data = _full(current).to(original.device).detach()
                    originals[id(current)] = original
                    m._parameters[key] = original
        for name, m in modules.items():
            for key, hooks in _hook_dicts(m):
                for hook_id in [i for i in hooks if i not in self._hooks[name].get(key, set())]:
                    del hooks[hook_id]
            for attribute in set(vars(m)) - self._attributes[name]:
                if attribute in _ADDED_ATTRIBUTES or attribute.startswith(_STATE_KEY_PREFIX):
                    del m.__dict__[attribute]
            _module_state_mapping.pop(m, None)
            m.__class__ = self._classes[name]
        return originals


class _ZeroTouch(torch.autograd.Function):
    """A scalar 0 whose gradient with respect to each input is 0: it makes a backward reach the inputs."""

    @staticmethod
    def forward(ctx: Any, *tensors: Tensor) -> Tensor:
        ctx.shapes = [(t.shape, t.dtype, t.device) for t in tensors]
        return tensors[0].new_zeros(())

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, ...]:
        return tuple(torch.zeros(shape, dtype=dtype, device=device) for shape, dtype, device in ctx.shapes)


class _Reached:
    """`reached(t)`: whether the backward of `losses` reaches tensor `t` (an output, or a leaf)."""

    def __init__(self, losses: list[Tensor]) -> None:
        self.nodes: set[Any] = set()
        self.leaves: set[int] = set()
        stack = [loss.grad_fn for loss in losses if loss.grad_fn is not None]
        while stack:
            node = stack.pop()
            if node in self.nodes:
                continue
            self.nodes.add(node)
            variable = getattr(node, "variable", None)  # AccumulateGrad: a leaf
            if variable is not None:
                self.leaves.add(id(variable))
            stack.extend(child for child, _ in node.next_functions if child is not None)

    def __call__(self, tensor: Tensor) -> bool:
        return tensor.grad_fn in self.nodes if tensor.grad_fn is not None else id(tensor) in self.leaves


def _gramian_only(balancer: Balancer) -> bool:
    """Whether `balancer` runs the engine unchanged on a method defined by `weights(G)` (not a wrapper, not IMTL's hybrid)."""
    if not isinstance(balancer, GradientBalancer):
        return False
    cls = type(balancer)
    return (
        cls.backward is Balancer.backward
        and cls._backward is GradientBalancer._backward
        and cls._shared_backward is GradientBalancer._shared_backward
        and cls._backward_on_params is GradientBalancer._backward_on_params
        and _sees_only_gramian(cls)
        and _sees_only_gramian(type(_innermost(balancer)))
    )


def _local(p: Tensor) -> Tensor:
    """This rank's shard of a sharded parameter (a DTensor)."""
    return p._local_tensor if isinstance(p, DTensor) else p


def _owned_parameters(module: nn.Module, units: list[str]) -> tuple[list[list[str]], list[str]]:
    """The names of the trainable parameters each unit holds (a parameter belongs to the deepest unit
    above it), then one group per parameter of the root's unit; and the names of the latter."""
    groups: list[list[str]] = [[] for _ in units]
    own: list[str] = []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        owners = [i for i, unit in enumerate(units) if name.startswith(unit + ".")]
        if owners:
            groups[max(owners, key=lambda i: len(units[i]))].append(name)
        else:
            own.append(name)
    return groups + [[name] for name in own], own


def _tensors(value: Any) -> list[Tensor]:
    """The tensors in a module's output (a tensor, or lists, tuples and dicts of them)."""
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in _tensors(item)]
    if isinstance(value, dict):
        return [t for item in value.values() for t in _tensors(item)]
    return []


def _hook_dicts(module: nn.Module) -> list[tuple[str, dict[Any, Any]]]:
    """The module's hook registries (`_forward_pre_hooks`, `_state_dict_hooks`, ...)."""
    return [(key, value) for key, value in vars(module).items() if "hooks" in key and isinstance(value, dict)]


def _registered_tensors(module: nn.Module) -> dict[str, Tensor]:
    return {**dict(module.named_parameters()), **dict(module.named_buffers())}


def _full(value: Any) -> Any:
    """A DTensor's whole value on the CPU (an all-gather: every rank calls it); anything else as it is."""
    return value.full_tensor().cpu() if isinstance(value, DTensor) else value


def _shard_like(value: Tensor, target: DTensor) -> DTensor:
    """This rank's shard of the whole tensor `value`, placed as `target` (no communication)."""
    local = value.detach().to(device=target.device, dtype=target.dtype)
    return distribute_tensor(local, target.device_mesh, target.placements, src_data_rank=None)


def _restore_optimizer(optimizer: torch.optim.Optimizer, originals: dict[int, nn.Parameter]) -> None:
    """Point the optimizer at the restored parameters, with its state gathered whole (a collective)."""
    state = optimizer.state
    restored: dict[Any, Any] = {}
    for group in optimizer.param_groups:
        for j, p in enumerate(group["params"]):
            original = originals.get(id(p), p)
            if p in state:
                restored[original] = {
                    k: _full(v).to(original.device) if isinstance(v, DTensor) else v for k, v in state[p].items()
                }
            group["params"][j] = original
    state.clear()
    state.update(restored)
