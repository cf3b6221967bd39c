"""Data-parallel training on torch.distributed: every rank computes what one process would on the global batch.

The global batch of a step is the union of the ranks' local batches (each rank's
training loaders hold `1/world_size` of every dataset, `DistributedSampler`'s split).
One step on one rank:

1. `global_step`: the rank's forward, then one all-reduce of each task's Σ count·loss,
   its count and a failure flag. Each task loss becomes the surrogate
   `s·L_r − (s·L_r).detach() + L`: its value is the global loss L (the same bits on every
   rank, so stateful balancers stay identical), its gradient this rank's share `s·∇L_r`
   (s = world_size·n_r/n weights ranks by their labelled rows, so that the mean over
   ranks of the shares is the global gradient). A failure on any rank makes every rank raise.
2. `backward`, by kind of balancer:
   - loss-weighting balancers (`LossBalancer`): the forward ran through
     `torch.nn.parallel.DistributedDataParallel`, whose bucketed all-reduce averages the
     model's gradients while the backward runs; the balancer's own parameters (UW's
     log-variances, …) are averaged after it.
   - gradient balancers get this strategy as the engine's `Collectives`. On the shared
     parameters the model is called without DDP (it would average gradients the method
     has yet to combine): the engine makes the shared parameters' `.grad` global (J's
     columns reduce-scattered and partial Gramians summed, or J's blocks all-reduced
     while its backward runs, `mtlkit.weighting.overlap`), and one
     coalesced all-reduce then averages every other gradient (heads, balancer). At a
     representation (models with `rep_grad`) the forward runs through DDP: the engine
     sums the T×T Gramian (or all-gathers the rows, for a method that needs them), then
     runs one backward of Σ_t L_t with the representation's gradient replaced by g, which
     DDP averages as it runs.
   Every balancer gets this strategy as its `Collectives`. Forwards during `backward` are
   a balancer's extra batches (MoDo, SDMGrad, Auto-λ: `mtlkit.weighting.context`): they
   run the bare model, and the balancer averages what it takes from them itself.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NoReturn

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from mtlkit import metrics
from mtlkit.protocol import MultiTaskModel, StepOutput
from mtlkit.training.checkpoint import rng_state, set_rng_state
from mtlkit.training.distributed import (
    RankFailure,
    join_process_group,
    module_tensors,
    shard_evaluation_loader,
    shard_training_loader,
)
from mtlkit.training.strategies.base import Strategy, trained_parameters
from mtlkit.weighting import Balancer, BalanceResult, LossBalancer


class TrainingStepModule(nn.Module):
    """`forward(X, Y)` is the model's `training_step`, so that DDP's forward is the Trainer's step."""

    def __init__(self, model: MultiTaskModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, X: Any, Y: Any) -> StepOutput:
        return self.model.training_step(X, Y)


class DDPStrategy(Strategy):
    """One rank of a torch.distributed run (launched by `torchrun`), training through DDP (see the module docstring).

    `backend` None means 'nccl' on CUDA and 'gloo' on the CPU; `timeout` bounds the
    collectives of a process group created here. `shard_jacobian`: whether gradient
    methods defined by weights(G) take the global Gramian from slices of the Jacobian
    (reduce-scatter, T×T all-reduce, all-gather of the update) rather than averaging the
    whole Jacobian; None: on NCCL only. `overlap_jacobian`: whether the Jacobian on shared
    parameters is all-reduced block by block while its backward runs
    (`mtlkit.weighting.overlap`) rather than in one piece after it. `ddp_options` go to
    `DistributedDataParallel` (`bucket_cap_mb`, `static_graph`, ...), over mtlkit's
    `find_unused_parameters=True, gradient_as_bucket_view=True`. `timings` accumulates the seconds spent
    in each kind of collective ('losses', 'jacobian', 'gramian', 'update', 'gradients',
    'setup', 'evaluation'; DDP's own all-reduce overlaps the backward and is not timed). On CUDA,
    set `profile` to synchronise around them so that the times are the collectives' own.
    """

    def __init__(
        self,
        backend: str | None = None,
        timeout: float = 600.0,
        shard_jacobian: bool | None = None,
        overlap_jacobian: bool = True,
        ddp_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.shard_jacobian = shard_jacobian
        self.overlaps_jacobian = overlap_jacobian  # `Collectives.overlaps_jacobian`
        self.ddp_options = dict(ddp_options or {})
        # The rank this process will have (torchrun's RANK, or the existing group's), known before `launch`.
        self.rank = (
            dist.get_rank() if dist.is_available() and dist.is_initialized() else int(os.environ.get("RANK", "0"))
        )
        self.backend = backend
        self.timeout = timeout
        self.profile = False
        self.device = torch.device("cpu")
        self._model: MultiTaskModel | None = None
        self._forward: Callable[[Any, Any], StepOutput] | None = None
        self._model_params: list[Tensor] = []
        self.reduces_in_backward = False  # `Collectives.reduces_in_backward`: set by `setup`
        self.shards_jacobian = False  # `Collectives.shards_jacobian`: set by `launch`
        self._balancer_params: list[Tensor] = []
        self._in_backward = False  # set during `backward`: forwards then are a balancer's extra batches

    # ------------------------------------------------------------------ set-up

    def launch(self, device: torch.device | None) -> torch.device:
        self.device = join_process_group(device, self.backend, self.timeout)
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        # gloo's reduce-scatter is slower than its all-reduce (benchmarks/README.md); NCCL's is about half.
        nccl = dist.get_backend() == "nccl"
        self.shards_jacobian = nccl if self.shard_jacobian is None else self.shard_jacobian
        self.timings = {}
        return self.device

    def setup(self, model: MultiTaskModel, balancer: Balancer, train: Sequence[DataLoader]) -> list[DataLoader]:
        """Rank 0's random state, loader seeds, weights and balancer state everywhere; the rank's shards."""
        set_rng_state(self.broadcast_object(rng_state()))
        seeds = self.broadcast_object([getattr(loader, "seed", None) for loader in train])
        shards: list[DataLoader] = [
            shard_training_loader(loader, self.world_size, self.rank, seed) for loader, seed in zip(train, seeds)
        ]
        module = _as_module(model)
        self.broadcast_tensors(module_tensors(module, balancer))
        self._model = model
        self._forward = self._wrap(model, balancer)
        self._model_params = trained_parameters(module)
        self.reduces_in_backward = isinstance(self._forward, DistributedDataParallel)
        self._balancer_params = trained_parameters(balancer)
        return shards

    def _wrap(self, model: MultiTaskModel, balancer: Balancer) -> Callable[[Any, Any], StepOutput]:
        """DDP, except for gradient balancers on shared parameters (see the module docstring)."""
        if not isinstance(balancer, LossBalancer) and not getattr(model, "rep_grad", False):
            return model.training_step
        options = {
            # A batch labelled for some tasks only leaves the other heads unused; DDP leaves the
            # gradient of a parameter no rank used untouched, as one process would.
            "find_unused_parameters": True,
            # .grad is a view of DDP's bucket: no copy between them after the all-reduce.
            "gradient_as_bucket_view": True,
            **self.ddp_options,
        }
        return DistributedDataParallel(
            TrainingStepModule(model), device_ids=[self.device] if self.device.type == "cuda" else None, **options
        )

    def teardown(self) -> None:
        self._model = self._forward = None
        self._model_params, self._balancer_params = [], []
        self.reduces_in_backward = False

    # ------------------------------------------------------------------ one step

    def training_step(self, X: Any, Y: Any) -> StepOutput:
        if self._forward is None or self._model is None:
            raise RuntimeError("DDPStrategy.training_step before setup")
        if self._in_backward:
            # A balancer's extra batch (mtlkit.weighting.context): the balancer reduces its gradients
            # itself, and DDP expects one forward per backward.
            return self._model.training_step(X, Y)
        return self._forward(X, Y)

    def global_step(
        self, local_step: Callable[[], tuple[StepOutput, Any]], task_names: list[str], loss_dtype: torch.dtype
    ) -> tuple[StepOutput, Any]:
        """This step's losses on the global batch (see the module docstring); raises on every rank if one failed."""
        out: StepOutput | None = None
        dataset: Any = None
        failure: BaseException | None = None
        try:
            out, dataset = local_step()
        except Exception as error:  # passed to every rank below, where all of them raise
            failure = error
        if out is None:
            out = StepOutput({})  # this rank failed: it contributes nothing and raises below
        local = dict(out.losses)
        unknown = [task for task in local if task not in task_names]
        if unknown and failure is None:
            failure = KeyError(f"training_step returned losses of unknown task(s) {unknown}; tasks: {task_names}")
        T = len(task_names)
        # One buffer [Σ count·loss per task, count per task, failure flag], built with one copy to the device.
        present = [task for task in task_names if task in local] if failure is None else []
        host = [0.0] * T + [float(out.counts.get(task, 1)) if task in present else 0.0 for task in task_names]
        host.append(0.0 if failure is None else 1.0)
        buffer = torch.tensor(host, dtype=torch.float64).to(self.device)
        if present:
            where = torch.tensor([task_names.index(task) for task in present]).to(self.device)
            values = torch.stack([local[task].detach().reshape(()) for task in present]).to(torch.float64)
            buffer.index_copy_(0, where, values * buffer[where + T])
        self.all_reduce_sum(buffer, "losses")
        reduced = buffer[T:].tolist()  # the step's one host read: the global counts and the failure flag
        if reduced[T] > 0:
            self._raise_failure(failure, "a training step (data loading or forward)")
        sums, counts = buffer[:T], reduced[:T]
        dtype = next((loss.dtype for loss in local.values()), loss_dtype)
        losses: dict[str, Tensor] = {}
        global_counts: dict[str, int] = {}
        for i, task in enumerate(task_names):
            if counts[i] == 0:
                continue  # no rank has a label for this task
            value = (sums[i] / counts[i]).to(dtype)
            if task in local:
                scaled = local[task] * (self.world_size * out.counts.get(task, 1) / counts[i])
                losses[task] = scaled - scaled.detach() + value  # value: exactly the global loss
            else:
                losses[task] = value.requires_grad_()  # no row here: the global value, zero gradient
            global_counts[task] = int(counts[i])
        return StepOutput(losses, global_counts, out.shared_reps), dataset

    def backward(
        self,
        balancer: Balancer,
        losses: dict[str, Tensor],
        shared_params: Sequence[Tensor] | None,
        shared_reps: list[Tensor] | None,
    ) -> BalanceResult:
        self._in_backward = True
        try:
            return self._backward(balancer, losses, shared_params, shared_reps)
        finally:
            self._in_backward = False

    def _backward(
        self,
        balancer: Balancer,
        losses: dict[str, Tensor],
        shared_params: Sequence[Tensor] | None,
        shared_reps: list[Tensor] | None,
    ) -> BalanceResult:
        if isinstance(balancer, LossBalancer):  # DDP averaged the model's gradients in the backward
            result = balancer.backward(losses, shared_params=shared_params, shared_reps=shared_reps, collectives=self)
            self.average_gradients(self._balancer_params)
            return result
        if self.reduces_in_backward and shared_reps is None:
            raise ValueError(
                f"{type(self._model).__name__} has rep_grad=True but this batch's training_step returned no "
                "shared_reps: a rep_grad model must return its shared representation for every batch"
            )
        result = balancer.backward(losses, shared_params=shared_params, shared_reps=shared_reps, collectives=self)
        if self.reduces_in_backward:  # DDP averaged the model's gradients in the engine's one backward
            self.average_gradients(self._balancer_params)
            return result
        global_ = {id(p) for p in shared_params or ()}  # the engine's contract: their .grad is global
        rest = [p for p in self._model_params if id(p) not in global_]
        self.average_gradients(rest + self._balancer_params)
        return result

    # ------------------------------------------------------------------ per epoch, evaluation, writing

    def epoch_end(self, model: nn.Module) -> None:
        """Rank 0's buffers (BatchNorm statistics) on every rank."""
        self.broadcast_tensors(model.buffers())

    def score(self, model: MultiTaskModel, loaders: list[DataLoader]) -> dict[str, float]:
        """`metrics.score` over the whole of each loader: each rank scores its share, the metric states are reduced.

        Per loader: each rank predicts its shard (every example once over the ranks) and
        updates one `metrics.ScoreState` per scored label; the ranks agree on each label's
        number of classes (one max all-reduce) before, and reduce the states (sums of
        counts and statistics; the rows themselves only for roc_auc and custom metric
        functions) after. Every rank then computes the same scores.
        """
        scorers = dict(model.scorers())
        scores: dict[str, float] = {}
        for loader in loaders:
            dataset: Any = loader.dataset  # a DictDataset (name, split, Y_dict)
            what = f"scoring dataset {dataset.name!r} (split {dataset.split!r})"
            mapping = metrics.labels_to_tasks(dataset.Y_dict.keys(), model.task_names)
            labels = [label for label, task in mapping.items() if task in scorers]
            rows: dict[str, list[Tensor | None]] = {}
            classes = torch.zeros(len(labels), dtype=torch.float64, device=self.device)
            failure = None
            try:
                results = self._predict_shard(model, loader, scorers)
                rows = {label: [results[key].get(label) for key in ("golds", "preds", "probs")] for label in labels}
                for i, label in enumerate(labels):
                    golds = rows[label][0]
                    if golds is not None and len(golds):
                        classes[i] = scorers[mapping[label]].num_classes(*rows[label]) or 0
            except Exception as error:  # shared with the other ranks below; every rank then raises
                failure = error
            self.check(failure, what)
            with self._timed("evaluation"):
                dist.all_reduce(classes, op=dist.ReduceOp.MAX)
            states: dict[str, metrics.ScoreState] = {}
            try:
                for i, label in enumerate(labels):
                    scorer = scorers[mapping[label]]
                    if classes[i] == 0 and not scorer.is_regression and scorer.metrics:
                        continue  # no rank has a labelled row of this classification label
                    states[label] = state = scorer.state(int(classes[i]) or None)
                    if rows[label][0] is not None:
                        state.update(*rows[label])
            except Exception as error:
                failure = error
            self.check(failure, what)
            with self._timed("evaluation"):
                for state in states.values():
                    state.sync()
            for label, state in states.items():
                if state.counts[0] > 0:  # as `metrics.score`: a label without labelled rows gets no entry
                    where = f"{label}/{dataset.name}/{dataset.split}"
                    scores.update({f"{where}/{name}": value for name, value in state.compute().items()})
        return scores

    def _predict_shard(self, model: MultiTaskModel, loader: DataLoader, scorers: dict[str, Any]) -> dict[str, Any]:
        """`metrics.predict` of this rank's share of `loader` (every example once over the ranks)."""
        shard = shard_evaluation_loader(loader, self.world_size, self.rank)
        return metrics.predict(model, shard, return_preds=True, scorers=scorers)

    def run_on_main(self, write: Callable[[], None], what: str) -> None:
        """Call `write` on rank 0; a failure there (OSError) stops every rank."""
        failure = None
        if self.is_main:
            try:
                write()
            except OSError as error:  # passed to the other ranks by `check`, then raised everywhere
                failure = error
        self.check(failure, what)

    # ------------------------------------------------------------------ collectives

    def all_reduce_sum(self, tensor: Tensor, kind: str) -> None:
        """`Collectives.all_reduce_sum`: `tensor` summed over ranks, in place; the time counts under `kind`."""
        with self._timed(kind):
            dist.all_reduce(tensor)

    def reduce_scatter_sum(self, output: Tensor, input: Tensor, kind: str) -> None:
        """`Collectives.reduce_scatter_sum`: this rank's slice of `input` summed over ranks, into `output`."""
        with self._timed(kind):
            dist.reduce_scatter(output, list(input.chunk(self.world_size)))  # the list forms exist in every torch 2

    def start_all_reduce_sum(self, tensor: Tensor, kind: str) -> Callable[[], None]:
        """Start summing `tensor` over ranks in place; the returned function waits, the wait counts under `kind`."""
        work = dist.all_reduce(tensor, async_op=True)

        def wait() -> None:
            with self._timed(kind):
                work.wait()

        return wait

    def all_gather(self, output: Tensor, input: Tensor, kind: str) -> None:
        """`Collectives.all_gather`: every rank's `input`, concatenated in rank order, into `output`."""
        with self._timed(kind):
            dist.all_gather(list(output.chunk(self.world_size)), input)

    def average_gradients(self, params: Iterable[Tensor]) -> None:
        """Average `.grad` over ranks (one all-reduce per dtype); a parameter no rank gave a gradient keeps None."""
        for group in _by_dtype(list({id(p): p for p in params}.values())).values():
            flags = torch.tensor([p.grad is not None for p in group], dtype=group[0].dtype, device=self.device)
            flat = torch.cat(
                [p.grad.reshape(-1) if p.grad is not None else p.new_zeros(p.numel()) for p in group] + [flags]
            )
            self.all_reduce_sum(flat, "gradients")
            sizes = [p.numel() for p in group]
            grads = flat[: sum(sizes)].div_(self.world_size).split(sizes)
            for p, grad, has in zip(group, grads, (flat[sum(sizes) :] > 0).tolist()):
                if has:
                    p.grad = grad.view_as(p)

    def broadcast_object(self, value: Any) -> Any:
        """Rank 0's `value` (any picklable object), on every rank."""
        box = [value]
        with self._timed("setup"):
            dist.broadcast_object_list(box, src=0)
        return box[0]

    def broadcast_tensors(self, tensors: Iterable[Tensor]) -> None:
        """Overwrite `tensors` with rank 0's values (one broadcast per dtype)."""
        with self._timed("setup"), torch.no_grad():
            for group in _by_dtype(t for t in tensors if t.numel() > 0).values():
                flat = torch.cat([t.reshape(-1) for t in group])
                dist.broadcast(flat, src=0)
                for t, value in zip(group, flat.split([t.numel() for t in group])):
                    t.copy_(value.view_as(t))

    def check(self, failure: BaseException | None, what: str) -> None:
        """Raise on every rank if `failure` is set on any (one all-reduce); `what` names the failed part."""
        flag = torch.tensor([0.0 if failure is None else 1.0], device=self.device)
        self.all_reduce_sum(flag, "setup")
        if float(flag) > 0:
            self._raise_failure(failure, what)

    def _raise_failure(self, failure: BaseException | None, what: str) -> NoReturn:
        """Every rank learns which ranks failed and why; the failing ones re-raise their own error."""
        message = None if failure is None else f"{type(failure).__name__}: {failure}"
        messages: list[Any] = [None] * self.world_size
        dist.all_gather_object(messages, message)
        if failure is not None:
            raise failure
        failed = "; ".join(f"rank {rank}: {text}" for rank, text in enumerate(messages) if text is not None)
        raise RankFailure(f"{what} failed on another rank, so every rank stops. {failed}")

    @contextlib.contextmanager
    def _timed(self, kind: str) -> Iterator[None]:
        if self.profile and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        yield
        if self.profile and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.timings[kind] = self.timings.get(kind, 0.0) + time.perf_counter() - start


def _as_module(model: MultiTaskModel) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{type(model).__name__} is not an nn.Module; the Trainer trains nn.Module models")
    return model


def _by_dtype(tensors: Iterable[Tensor]) -> dict[torch.dtype, list[Tensor]]:
    groups: dict[torch.dtype, list[Tensor]] = {}
    for t in tensors:
        groups.setdefault(t.dtype, []).append(t)
    return groups
