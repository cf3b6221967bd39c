"""What each rank runs in tests/training/test_distributed.py (spawned processes import this module by name).

A float64 three-task model and two training datasets whose labels are partly missing
(so ranks hold different numbers of labelled rows, and sometimes none of a task), the
runs the test compares, and `worker`, the entry point of each spawned rank.
"""

from __future__ import annotations

import os
import traceback
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from mtlkit import DictDataLoader, DictDataset, Scorer, Trainer
from mtlkit.training import DDPStrategy, StepOutput, close_process_group

LOCAL_BATCH = 4  # per rank; one process uses WORLD * LOCAL_BATCH
WORLD = 2
METHODS = (
    "ew",
    "uw",
    "mgda",
    "pcgrad",
    "cagrad",
    "imtl",
    "moco",
    "excess_mtl",
    "metabalance",
    "nash_mtl",
    "graddrop",
    "db_mtl",
    "famo",
    "fairgrad",
    "mgda@every=2,ema=0.9",
    "modo",
    "sdmgrad",
    "auto_lambda",
    "auto_lambda@every=2",  # the wrapper forwards the collectives to the method
)
REP_METHODS = (
    "mgda",
    "moco",  # batch rows: summed over ranks
    "excess_mtl",
    "nash_mtl",
    "fairgrad",
    "mgda@every=2,ema=0.9",
    "modo",
    "sdmgrad",
    "auto_lambda",
    "modo@every=2,ema=0.9",
    "famo",  # post-step losses through DDP
    "pcgrad",  # random projection order: the same draws on every rank
    "gradvac",
    "dualproj",
    "config",
    "db_mtl",  # the methods below need the per-sample rows themselves: every rank gathers the global rows
    "graddrop",  # one uniform draw per column: the gathered columns in one process's order
    "metabalance",
    "metabalance@every=2",  # the wrapper of a method that needs the rows
)  # Gramian-based methods, methods on the batch rows, those whose weights come from other batches, the
# methods that need the rows, and loss methods at the representation
# At the representation on one dataset of 20 rows with every task labelled: the last global batch has 4 rows
# (2 per rank). DB-MTL is not among them: its state needs a representation of fixed size, in one process too.
UNEVEN_METHODS = ("graddrop", "trimmed_mean", "metabalance", "mgda")
# Methods that draw validation batches: each rank draws from its shard of the validation loader, so
# its batch size scales like the training loaders' (and 16 rows, which 8 divides: no padded last batch).
VALID_METHODS = ("auto_lambda",)
SHARDED_METHODS = ("mgda", "pcgrad", "cagrad", "imtl", "nash_mtl")  # Gramian-only: G from slices of J
UNOVERLAPPED_METHODS = ("mgda", "graddrop")  # J all-reduced in one piece after its backward
TIMEOUT_S = 60


class Net(nn.Module):
    """Tanh trunk, heads a (3 classes), b (regression), c (2 classes); label -1 = none.

    `fail=(kind, rank, call)` makes that rank's `call`-th training step raise a
    ValueError (kind 'raise') or return a NaN loss for task a (kind 'nan').
    """

    def __init__(self, rep_grad: bool = False, fail: tuple[str, int, int] | None = None) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(4, 12), nn.Tanh(), nn.Linear(12, 6), nn.Tanh())
        self.heads = nn.ModuleDict({"a": nn.Linear(6, 3), "b": nn.Linear(6, 1), "c": nn.Linear(6, 2)})
        self.rep_grad = rep_grad
        self.fail = fail
        self.calls = 0

    @property
    def task_names(self) -> list[str]:
        return ["a", "b", "c"]

    def training_step(self, X, Y) -> StepOutput:
        self.calls += 1
        failing = self.fail is not None and (dist.get_rank(), self.calls) == self.fail[1:]
        if failing and self.fail[0] == "raise":
            raise ValueError(f"bad batch on rank {dist.get_rank()}")
        h = self.trunk(X["x"])
        losses, counts = {}, {}
        for task in self.task_names:
            if task not in Y:
                continue
            y, out = Y[task], self.heads[task](h)
            if task == "b":
                losses[task], counts[task] = F.mse_loss(out.squeeze(-1), y), len(y)
            elif bool((y != -1).any()):
                mask = y != -1
                losses[task], counts[task] = F.cross_entropy(out[mask], y[mask]), int(mask.sum())
        if failing:
            losses["a"] = losses["a"] * float("nan")
        return StepOutput(losses, counts, [h] if self.rep_grad else None)

    def shared_parameters(self):
        return list(self.trunk.parameters())

    def task_outputs(self, X, task_names):
        h = self.trunk(X["x"])
        return {t: self.heads[t](h).squeeze(-1) if t == "b" else F.softmax(self.heads[t](h), -1) for t in task_names}

    def scorers(self):
        return {"a": Scorer(["accuracy"]), "b": Scorer(["mse"]), "c": Scorer(["accuracy", "coverage"])}


class RichNet(Net):
    """Net scored with every kind of metric state: confusion counts, error sums, rows (roc_auc, a custom function)."""

    def scorers(self):
        spread = {"spread": lambda golds, preds, probs: float(np.std(preds - golds))}
        return {
            "a": Scorer(["accuracy", "f1", "f1_micro", "matthews_corrcoef", "roc_auc", "fbeta"], beta=0.5),
            "b": Scorer(["mse", "mae", "r2"], custom_metric_funcs=spread),
            "c": Scorer(["precision", "recall", "coverage", "f1"]),
        }


def one_row_loader() -> DictDataLoader:
    """One validation row: rank 1's shard of it is empty."""
    data = make_loaders(4)[2].dataset
    one = DictDataset(
        "dsOne", "test", {k: v[:1] for k, v in data.X_dict.items()}, {k: v[:1] for k, v in data.Y_dict.items()}
    )
    return DictDataLoader(one, batch_size=4)


def make_model(rep_grad: bool = False, fail=None) -> Net:
    torch.manual_seed(0)
    return Net(rep_grad, fail).double()


def make_loaders(
    batch_size: int, valid_batch: int = 4, valid_rows: int = 15, uneven: bool = False
) -> list[DictDataLoader]:
    """Training dsA (32 rows: a, c on a quarter) and dsB (16 rows: b, c on half); valid (15 rows) and test (9).

    `uneven`: instead of dsA and dsB, dsU (20 rows: a, b, c on half), whose last batch is smaller.
    """
    g = torch.Generator().manual_seed(1)

    def rows(n, c_every):
        x = torch.randn(n, 4, generator=g, dtype=torch.float64)
        a = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
        b = x[:, 2] - x[:, 3]
        c = (x[:, 1] * x[:, 2] > 0).long()
        c[torch.arange(n) % c_every != 0] = -1
        return x, a, b, c

    x, a, _, c = rows(32, 4)
    ds_a = DictDataset("dsA", "train", {"x": x}, {"a": a, "c": c})
    x, _, b, c = rows(16, 2)
    ds_b = DictDataset("dsB", "train", {"x": x}, {"b": b, "c": c})
    x, a, b, c = rows(valid_rows, 1)
    valid = DictDataset("dsV", "valid", {"x": x}, {"a": a, "b": b, "c": c})
    x, a, b, c = rows(9, 1)
    test = DictDataset("dsV", "test", {"x": x}, {"a": a, "b": b, "c": c})
    train = [
        DictDataLoader(ds_a, batch_size=batch_size, shuffle=True, seed=10),
        DictDataLoader(ds_b, batch_size=batch_size, shuffle=True, seed=11),
    ]
    if uneven:
        x, a, b, c = rows(20, 2)
        ds_u = DictDataset("dsU", "train", {"x": x}, {"a": a, "b": b, "c": c})
        train = [DictDataLoader(ds_u, batch_size=batch_size, shuffle=True, seed=12)]
    return [
        *train,
        DictDataLoader(valid, batch_size=valid_batch),
        DictDataLoader(test, batch_size=4),
    ]


def config(weighting: str, **overrides) -> dict:
    return {
        "n_epochs": 2,
        "lr": 0.1,
        "optimizer": "sgd",
        "weighting": weighting,
        "seed": 0,
        "progress_bar": False,
        **overrides,
    }


def run(
    weighting: str,
    processes: int,
    rep_grad: bool = False,
    resume_from=None,
    sharded: bool = False,
    overlap: bool = True,
    uneven: bool = False,
    **overrides,
) -> dict:
    """Train with `processes` ranks' worth of batch; return what the tests compare.

    `sharded`: Gramian-only methods take G from slices of J (the NCCL default) instead of the averaged J.
    `overlap` False: J on the shared parameters is all-reduced after its backward, not block by block during it.
    `uneven`: on `make_loaders`' dataset whose last batch is smaller.
    """
    model = make_model(rep_grad)
    trainer = Trainer(**config(weighting, **overrides))
    if sharded or not overlap:
        trainer.strategy = DDPStrategy(shard_jacobian=sharded, overlap_jacobian=overlap)
    batch = LOCAL_BATCH * (WORLD // processes)
    valid = {"valid_batch": batch, "valid_rows": 16} if weighting.split("@")[0] in VALID_METHODS else {}
    final = trainer.fit(model, make_loaders(batch, uneven=uneven, **valid), resume_from=resume_from)
    return outcome(model, trainer, final)


def outcome(model: nn.Module, trainer: Trainer, final: dict) -> dict:
    """What a run's comparison reads: parameters, balancer state, final scores, history, steps, timings."""
    return {
        "params": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "balancer": {k: v.cpu().clone() for k, v in trainer.balancer.state_dict().items() if torch.is_tensor(v)},
        "final": final,
        "history": trainer.history,
        "step": trainer.step,
        "timings": dict(trainer.strategy.timings),
    }


def _error(fn) -> dict:
    try:
        fn()
    except Exception as error:
        return {"type": type(error).__name__, "message": str(error)}
    return {"type": None, "message": ""}


def _scenarios(rank: int, out: Path) -> dict:
    results: dict = {}
    for method in METHODS:
        results[method] = run(method, WORLD, distributed=True)
    for method in SHARDED_METHODS:
        results[f"{method}/sharded"] = run(method, WORLD, distributed=True, sharded=True)
    for method in UNOVERLAPPED_METHODS:
        results[f"{method}/unoverlapped"] = run(method, WORLD, distributed=True, overlap=False)
    for method in REP_METHODS:
        results[f"{method}/rep"] = run(method, WORLD, rep_grad=True, distributed=True)
    for method in UNEVEN_METHODS:
        results[f"{method}/uneven"] = run(method, WORLD, rep_grad=True, uneven=True, distributed=True)
    results["db_mtl@every=2/rep"] = _error(lambda: run("db_mtl@every=2", WORLD, rep_grad=True, distributed=True))
    # Rank-specific folders show who writes; rank 0's checkpoint is resumed on one process by the test.
    results["written"] = run(
        "uw",
        WORLD,
        distributed=True,
        n_epochs=1,
        logging=True,
        checkpointing=True,
        log_dir=str(out / f"logs{rank}"),
        checkpoint_dir=str(out / f"checkpoints{rank}"),
    )
    results["resumed"] = run("uw", WORLD, distributed=True, resume_from=out / "one_process.pt")
    results["auto"] = run("pcgrad", WORLD, strategy="auto")  # the script's group makes 'auto' pick ddp
    strategy = DDPStrategy()
    strategy.launch(None)
    torch.manual_seed(0)
    results["scores"] = strategy.score(RichNet().double(), make_loaders(4)[2:])
    results["scores/one"] = strategy.score(make_model(), [one_row_loader()])
    results["raise"] = _error(
        lambda: Trainer(**config("mgda", distributed=True)).fit(
            make_model(fail=("raise", 1, 2)), make_loaders(LOCAL_BATCH)
        )
    )
    loaders = make_loaders(LOCAL_BATCH)
    loaders[2] = DictDataLoader(loaders[2].dataset, sampler=list(range(15)), batch_size=4)  # cannot be sharded
    results["auto_lambda/custom_sampler"] = _error(
        lambda: Trainer(**config("auto_lambda", distributed=True)).fit(make_model(), loaders)
    )
    results["nan"] = _error(
        lambda: Trainer(**config("ew", distributed=True)).fit(make_model(fail=("nan", 1, 3)), make_loaders(LOCAL_BATCH))
    )
    return results


def worker(rank: int, ports: tuple[int, int], out: str) -> None:
    """One rank: repeated fits in a process group the Trainer creates from torchrun's variables, then the scenarios.

    Phase 1 (issue: a second `fit` used to hang): three fits with different balancers in
    the group the first one creates, which stays for the next ones and goes on
    `close_process_group()`. Phase 2: a group the script creates itself, which mtlkit uses
    and never destroys.
    """
    torch.set_num_threads(1)
    out = Path(out)
    try:
        os.environ.update(
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(ports[0]),
            RANK=str(rank),
            WORLD_SIZE=str(WORLD),
            LOCAL_RANK=str(rank),
        )
        results = {"env": run("ew", WORLD, distributed=True, dist_timeout=TIMEOUT_S)}
        results["env/kept_group"] = dist.is_initialized()
        results["env/again"] = run("mgda", WORLD, strategy="ddp", dist_timeout=TIMEOUT_S)
        results["env/third"] = run("uw", WORLD, strategy="auto", dist_timeout=TIMEOUT_S)
        close_process_group()
        results["env/closed"] = not dist.is_initialized()
        for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):  # phase 2: the script's own group
            del os.environ[name]
        dist.init_process_group(
            "gloo",
            init_method=f"tcp://127.0.0.1:{ports[1]}",
            rank=rank,
            world_size=WORLD,
            timeout=timedelta(seconds=TIMEOUT_S),
        )
        results.update(_scenarios(rank, out))
        close_process_group()
        results["user/kept_group"] = dist.is_initialized()
        dist.destroy_process_group()
    except Exception:
        (out / f"failure{rank}.txt").write_text(traceback.format_exc())
        raise
    torch.save(results, out / f"rank{rank}.pt")
