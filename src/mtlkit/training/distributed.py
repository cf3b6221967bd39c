"""Multi-process training with torch.distributed: every rank computes what one process would on the global batch.

The global batch of a step is the union of the ranks' local batches (each rank's
training loaders hold `1/world_size` of every dataset, `DistributedSampler`'s split).
What one rank does in a step (`Trainer._train_step` calls these in order):

1. `global_step_output`: one all-reduce of each task's Σ count·loss, its count and a
   failure flag. Each task loss becomes the surrogate `s·L_r − (s·L_r).detach() + L`:
   its value is the global loss L (the same bits on every rank, so stateful balancers
   stay identical), its gradient this rank's share `s·∇L_r` (s = world_size·n_r/n weights
   ranks by their labelled rows). A failure on any rank makes every rank raise.
2. The balancer's backward. Gradient balancers call back (`reduce_jacobian`): the
   per-task gradients of the shared parameters are averaged over ranks in one
   all-reduce before the method combines them, so the combination, written to the
   shared parameters' `.grad`, is the global one on every rank. At a shared
   representation (`rep_grad`) the rows are per-sample and cannot be averaged; the
   T×T Gramian is summed instead (`reduce_gramian`), which is exact for methods that
   see the gradients only through it.
3. `average_gradients`: one all-reduce averages every other gradient (all of them for
   loss-weighting balancers: ordinary data-parallel averaging).

DDP's `DistributedDataParallel` wrapper is not used: the Trainer drives models through
`training_step`, not `forward`, and gradient balancers write the shared gradients
themselves; the coalesced all-reduce after the backward gives DDP's averages, without
its overlap of communication and backward.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Sampler

from mtlkit import metrics
from mtlkit.data import DictDataLoader, EpochSampler
from mtlkit.errors import ConfigError
from mtlkit.protocol import StepOutput

# The DataLoader options a shard keeps from the loader it replaces.
_LOADER_OPTIONS = (
    "batch_size",
    "drop_last",
    "num_workers",
    "pin_memory",
    "timeout",
    "worker_init_fn",
    "multiprocessing_context",
    "generator",
    "prefetch_factor",
    "persistent_workers",
    "pin_memory_device",
    "in_order",
)
_LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class RankFailure(RuntimeError):
    """Another rank failed; raised on every rank but the failing one, which raises its own error."""


def is_main_process() -> bool:
    """True unless this is a rank other than 0 of a torch.distributed run (initialised, or launched by torchrun)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def module_tensors(*modules: nn.Module) -> list[Tensor]:
    """The parameters and buffers of `modules` (what `broadcast_tensors` copies from rank 0)."""
    return [t for module in modules for t in (*module.parameters(), *module.buffers())]


class Distributed:
    """One rank's part in a torch.distributed run: rank, world size, device, and the Trainer's collectives.

    `timings` accumulates the seconds spent in each kind of collective ('losses',
    'jacobian', 'gramian', 'gradients', 'setup', 'evaluation'); on CUDA, set `profile`
    to synchronise around them so that the times are the collectives' own.
    """

    def __init__(self, rank: int, world_size: int, device: torch.device, owns_group: bool) -> None:
        self.rank = rank
        self.world_size = world_size
        self.device = device
        self.owns_group = owns_group
        self.profile = False
        self.timings: dict[str, float] = {}
        self._synced: set[int] = set()  # parameters whose .grad a balancer computed on the global batch this step

    @classmethod
    def start(
        cls, device: torch.device | None = None, backend: str | None = None, timeout: float = 600.0
    ) -> Distributed:
        """Join the process group (creating it from torchrun's environment if needed) and pick this rank's device.

        `device` None means `cuda:LOCAL_RANK` when CUDA is available, else the CPU; a
        bare 'cuda' also means `cuda:LOCAL_RANK`. `backend` None means 'nccl' on CUDA and
        'gloo' on the CPU. `timeout` (seconds) bounds every collective of a group
        created here, so that a rank that died cannot leave the others waiting forever.
        """
        if not dist.is_available():
            raise ConfigError("distributed=True, but this PyTorch build has no torch.distributed support")
        owns_group = not dist.is_initialized()
        if owns_group:
            missing = [name for name in _LAUNCH_VARIABLES if name not in os.environ]
            if missing:
                raise ConfigError(
                    f"distributed=True, but no torch.distributed process group is initialised and the environment "
                    f"lacks {missing}: launch with `torchrun --nproc_per_node=N script.py` (or call "
                    "torch.distributed.init_process_group before fit), or set distributed=False"
                )
        device = _rank_device(device)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        if owns_group:
            dist.init_process_group(
                backend or ("nccl" if device.type == "cuda" else "gloo"), timeout=timedelta(seconds=timeout)
            )
        return cls(dist.get_rank(), dist.get_world_size(), device, owns_group)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def close(self) -> None:
        """Leave the process group if this object created it."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()

    # ------------------------------------------------------------------ set-up

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
        with self._timed("setup"):
            dist.all_reduce(flag)
        if float(flag) > 0:
            self._raise_failure(failure, what)

    def barrier(self) -> None:
        with self._timed("setup"):
            dist.barrier()

    # ------------------------------------------------------------------ one step

    def global_step_output(
        self, out: StepOutput | None, task_names: list[str], failure: BaseException | None, dtype: torch.dtype
    ) -> StepOutput:
        """This step's losses on the global batch (see the module docstring); raises on every rank if one failed.

        `out` is this rank's output (None when `failure` is set), `dtype` the loss dtype
        for a rank without any labelled row in its batch.
        """
        local = {} if out is None else dict(out.losses)
        unknown = [task for task in local if task not in task_names]
        if unknown and failure is None:
            failure = KeyError(f"training_step returned losses of unknown task(s) {unknown}; tasks: {task_names}")
        T = len(task_names)
        buffer = torch.zeros(2 * T + 1, dtype=torch.float64, device=self.device)
        if failure is None:
            for i, task in enumerate(task_names):
                if task in local:
                    n = out.counts.get(task, 1)
                    buffer[i] = local[task].detach().to(torch.float64) * n
                    buffer[T + i] = n
        buffer[2 * T] = 0.0 if failure is None else 1.0
        with self._timed("losses"):
            dist.all_reduce(buffer)
        if float(buffer[2 * T]) > 0:
            self._raise_failure(failure, "a training step (data loading or forward)")
        sums, counts = buffer[:T], buffer[T : 2 * T].tolist()
        dtype = next((loss.dtype for loss in local.values()), dtype)
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
        return StepOutput(losses, global_counts, None if out is None else out.shared_reps)

    def reduce_jacobian(self, J: Tensor, params: list[Tensor], reached: list[bool]) -> tuple[Tensor, list[Tensor]]:
        """The mean over ranks of J (T × all shared parameters), restricted to the parameters some rank reached.

        One all-reduce carries J and the reached flags. The returned parameters' gradients
        are then global: `average_gradients` leaves them alone this step.
        """
        flags = torch.tensor(reached, dtype=J.dtype, device=J.device)
        flat = torch.cat([J.reshape(-1), flags])
        with self._timed("jacobian"):
            dist.all_reduce(flat)
        J = flat[: J.numel()].div_(self.world_size).view_as(J)
        used = (flat[J.numel() :] > 0).tolist()
        if not all(used):
            columns = torch.cat([torch.full((p.numel(),), u, device=J.device) for p, u in zip(params, used)])
            J = J[:, columns]
            params = [p for p, u in zip(params, used) if u]
        self._synced = {id(p) for p in params}
        return J, params

    def reduce_gramian(self, G: Tensor) -> Tensor:
        """The global batch's Gramian Σ_r G_r / world_size² (a rank's rows are world_size × its share)."""
        G = G.contiguous().clone()
        with self._timed("gramian"):
            dist.all_reduce(G)
        return G / self.world_size**2

    def average_gradients(self, params: Iterable[Tensor]) -> None:
        """Average `.grad` over ranks (one all-reduce per dtype); a parameter no rank gave a gradient keeps None.

        Parameters whose gradients `reduce_jacobian` made global this step are skipped.
        """
        synced, self._synced = self._synced, set()
        todo = [p for p in _unique(params) if p.requires_grad and id(p) not in synced]
        for group in _by_dtype(todo).values():
            flags = torch.tensor([p.grad is not None for p in group], dtype=group[0].dtype, device=self.device)
            flat = torch.cat(
                [p.grad.reshape(-1) if p.grad is not None else p.new_zeros(p.numel()) for p in group] + [flags]
            )
            with self._timed("gradients"):
                dist.all_reduce(flat)
            sizes = [p.numel() for p in group]
            grads = flat[: sum(sizes)].div_(self.world_size).split(sizes)
            for p, grad, has in zip(group, grads, (flat[sum(sizes) :] > 0).tolist()):
                if has:
                    p.grad = grad.view_as(p)

    # ------------------------------------------------------------------ evaluation

    def score(self, model: Any, dataloaders: list[DataLoader]) -> dict[str, float]:
        """`metrics.score` over the whole of each loader: each rank predicts its share, all score them gathered."""
        scorers = dict(model.scorers())
        scores: dict[str, float] = {}
        for loader in dataloaders:
            dataset = loader.dataset
            failure, results = None, None
            try:
                shard = shard_evaluation_loader(loader, self.world_size, self.rank)
                results = _to_cpu(metrics.predict(model, shard, return_preds=True, scorers=scorers))
            except Exception as error:  # shared with the other ranks below; every rank then raises
                failure = error
            parts: list[Any] = [None] * self.world_size
            with self._timed("evaluation"):
                dist.all_gather_object(parts, None if failure is not None else results)
            if any(part is None for part in parts):
                self._raise_failure(failure, f"scoring dataset {dataset.name!r} (split {dataset.split!r})")
            mapping = metrics.labels_to_tasks(dataset.Y_dict.keys(), model.task_names)
            gathered = {key: {label: _gathered(parts, key, label) for label in mapping} for key in ("golds", "preds", "probs")}
            scores.update(metrics.score_predictions(gathered, mapping, scorers, f"{dataset.name}/{dataset.split}"))
        return scores

    # ------------------------------------------------------------------ helpers

    def _raise_failure(self, failure: BaseException | None, what: str) -> None:
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


def shard_training_loader(loader: DataLoader, num_replicas: int, rank: int, seed: int | None) -> DictDataLoader:
    """This rank's share of a training `DictDataLoader`: `DistributedSampler`'s split, reshuffled by `(seed, epoch)`.

    Over the ranks, an epoch sees every example once (the last global batch is padded by
    wrapping around when the dataset does not divide evenly). The local batch keeps the
    loader's `batch_size`: the global batch holds the `num_replicas × batch_size` examples
    that one process with a loader of that batch size and `seed` takes in the same step.
    A loader already sharded for this rank is kept (with `seed`).
    """
    sampler = getattr(loader, "sampler", None)
    where = f"the training loader of dataset {loader.dataset.name!r} (split {loader.dataset.split!r})"
    if not isinstance(loader, DictDataLoader) or not isinstance(sampler, EpochSampler):
        raise ConfigError(
            f"distributed=True shards {where} across ranks itself: build it as DictDataLoader(dataset, "
            "batch_size=..., shuffle=..., seed=...) without a custom sampler or batch_sampler"
        )
    if (sampler.num_replicas, sampler.rank) == (num_replicas, rank):
        if seed is not None:
            loader.seed = seed
        return loader
    if sampler.num_replicas != 1:
        raise ConfigError(
            f"{where} is sharded for {sampler.num_replicas} replicas (rank {sampler.rank}) but this run has "
            f"{num_replicas} (rank {rank}): build it unsharded (num_replicas=1), the Trainer shards it"
        )
    options = {name: getattr(loader, name) for name in _LOADER_OPTIONS if hasattr(loader, name)}
    return DictDataLoader(
        loader.dataset,
        collate_fn=loader.collate_fn,
        seed=seed,
        shuffle=sampler.shuffle,
        num_replicas=num_replicas,
        rank=rank,
        **options,
    )


def shard_evaluation_loader(loader: DataLoader, num_replicas: int, rank: int) -> DataLoader:
    """This rank's share of an evaluation loader: examples rank, rank + num_replicas, … (no padding, no repeat)."""
    options = {name: getattr(loader, name) for name in _LOADER_OPTIONS if hasattr(loader, name)}
    sampler = _Strided(len(loader.dataset), num_replicas, rank)
    return DataLoader(loader.dataset, sampler=sampler, collate_fn=loader.collate_fn, **options)


class _Strided(Sampler[int]):
    def __init__(self, length: int, step: int, start: int) -> None:
        self.length, self.step, self.start = length, step, start

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.length, self.step))

    def __len__(self) -> int:
        return max(0, math.ceil((self.length - self.start) / self.step))


def _rank_device(device: torch.device | None) -> torch.device:
    """The configured device, with `cuda:LOCAL_RANK` for None (when CUDA is available) and for a bare 'cuda'."""
    if device is None and not torch.cuda.is_available():
        return torch.device("cpu")
    if device is None or (device.type == "cuda" and device.index is None):
        if "LOCAL_RANK" in os.environ:
            return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        rank = dist.get_rank() if dist.is_initialized() else 0
        return torch.device("cuda", rank % torch.cuda.device_count())
    return device


def _by_dtype(tensors: Iterable[Tensor]) -> dict[torch.dtype, list[Tensor]]:
    groups: dict[torch.dtype, list[Tensor]] = {}
    for t in tensors:
        groups.setdefault(t.dtype, []).append(t)
    return groups


def _unique(params: Iterable[Tensor]) -> list[Tensor]:
    seen: set[int] = set()
    out = []
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def _to_cpu(results: Mapping[str, Mapping[str, Tensor]]) -> dict[str, dict[str, Tensor]]:
    return {key: {label: t.cpu() for label, t in values.items()} for key, values in results.items()}


def _gathered(parts: list[Mapping[str, Mapping[str, Tensor]]], key: str, label: str) -> Tensor | None:
    pieces = [part[key][label] for part in parts if label in part.get(key, {})]
    return torch.cat(pieces) if pieces else None
