"""What each rank runs in tests/training/test_fsdp.py (spawned processes import this module by name).

The model, data and runs are those of `distributed_runs` (a float64 three-task model whose
training batches leave some ranks without labels of a task), trained with strategy='fsdp'.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.tensor import DTensor

sys.path.insert(0, str(Path(__file__).parent))
import distributed_runs as runs

from mtlkit import Scorer, Trainer
from mtlkit.architectures import HPS
from mtlkit.training import FSDPStrategy, close_process_group

WORLD = runs.WORLD
TIMEOUT_S = 60
METHODS = ("ew", "uw", "famo")  # loss-weighting balancers
REP_METHODS = ("mgda", "upgrad", "graddrop")  # gradient methods at the shared representation (GradDrop: gathered rows)
PARAM_METHODS = ("mgda", "pcgrad", "graddrop")
# Defined by weights(G): on the shared parameters, G from each rank's shard of the task gradients.
GRAMIAN_METHODS = ("mgda", "upgrad", "imtl_g", "cagrad", "nash_mtl")
HPS_RUNS = (("uw", False), ("mgda", True), ("pcgrad", False))


def fsdp(weighting: str, **overrides) -> dict:
    """`distributed_runs.run` on WORLD ranks under strategy='fsdp'."""
    return runs.run(weighting, WORLD, strategy="fsdp", dist_timeout=TIMEOUT_S, **overrides)


def probe_after_fit(out: Path, rank: int) -> dict:
    """Train under FSDP; then use the model, the optimizer and `Trainer.save` in this process as after one process."""
    model = runs.make_model()
    weight = model.trunk[0].weight  # the user's parameter object, kept by fit
    trainer = Trainer(**runs.config("uw", strategy="fsdp", optimizer="adam", lr=0.01, dist_timeout=TIMEOUT_S))
    loaders = [*runs.make_loaders(runs.LOCAL_BATCH), runs.one_row_loader()]  # rank 1's share of dsOne is empty
    final = trainer.fit(model, loaders)
    valid = loaders[2].dataset
    with torch.no_grad():
        outputs = model.task_outputs(valid.X_dict, ["a", "b", "c"])  # outside any FSDP hook
    if rank == 0:  # on one rank only: a collective here would hang
        trainer.save(out / "saved_after_fit.pt")
    return {
        "final": final,
        "outputs": outputs,
        "same_parameter": model.trunk[0].weight is weight,
        "class": type(model).__name__,
        "sharded": [name for name, p in model.named_parameters() if isinstance(p, DTensor)],
        "optimizer_params": all(
            p is q for p, q in zip(trainer.optimizer.param_groups[0]["params"], model.parameters(), strict=True)
        ),
        "params": {k: v.detach().clone() for k, v in model.state_dict().items()},
    }


def hps_model(rep_grad: bool = False) -> HPS:
    """mtlkit's HPS on the data of `distributed_runs`: it runs only the heads of tasks labelled in the rank's batch."""
    torch.manual_seed(0)
    return HPS(
        ["a", "b", "c"],
        lambda: nn.Sequential(nn.Linear(4, 12), nn.Tanh(), nn.Linear(12, 6), nn.Tanh()),
        {"a": nn.Linear(6, 3), "b": nn.Sequential(nn.Linear(6, 1), nn.Flatten(0)), "c": nn.Linear(6, 2)},
        rep_grad=rep_grad,
        input_key="x",
        losses={"a": F.cross_entropy, "b": F.mse_loss, "c": F.cross_entropy},
        metrics={"a": Scorer(["accuracy"]), "b": Scorer(["mse"]), "c": Scorer(["accuracy"])},
    ).double()


def hps_run(weighting: str, processes: int, rep_grad: bool = False, **overrides) -> dict:
    """`distributed_runs.run` for `hps_model`."""
    model = hps_model(rep_grad)
    trainer = Trainer(**runs.config(weighting, **overrides))
    final = trainer.fit(model, runs.make_loaders(runs.LOCAL_BATCH * (WORLD // processes)))
    return runs.outcome(model, trainer, final)


def sharded_mgda() -> dict:
    """MGDA on the shared parameters, the whole J on every rank (`sharded_gramian=False`), with G from each
    rank's slice of J's columns (one T×T all-reduce)."""
    model = runs.make_model()
    trainer = Trainer(**runs.config("mgda", dist_timeout=TIMEOUT_S))
    trainer.strategy = FSDPStrategy(timeout=TIMEOUT_S, shard_jacobian=True, sharded_gramian=False)
    final = trainer.fit(model, runs.make_loaders(runs.LOCAL_BATCH))
    return {
        "final": final,
        "params": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "timings": dict(trainer.strategy.timings),
    }


def whole_jacobian(weighting: str) -> dict:
    """`fsdp(weighting)` with the whole T×P Jacobian on every rank (`sharded_gramian=False`)."""
    model = runs.make_model()
    trainer = Trainer(**runs.config(weighting, dist_timeout=TIMEOUT_S))
    trainer.strategy = FSDPStrategy(timeout=TIMEOUT_S, sharded_gramian=False)
    final = trainer.fit(model, runs.make_loaders(runs.LOCAL_BATCH))
    return runs.outcome(model, trainer, final)


def blocks_as_units(weighting: str = "ew") -> dict:
    """Each Linear of the trunk and each head a unit of its own (the root holds no parameter)."""
    model = runs.make_model()
    trainer = Trainer(**runs.config(weighting, strategy="fsdp", dist_timeout=TIMEOUT_S))
    trainer.strategy = FSDPStrategy(timeout=TIMEOUT_S, units=["trunk.0", "trunk.2", "heads.a", "heads.b", "heads.c"])
    final = trainer.fit(model, runs.make_loaders(runs.LOCAL_BATCH))
    return {"final": final, "params": {k: v.detach().clone() for k, v in model.state_dict().items()}}


def _scenarios(rank: int, out: Path) -> dict:
    results: dict = {}
    for method in METHODS:  # consecutive fits in one process group, each with another balancer
        results[method] = fsdp(method)
    for method in REP_METHODS:
        results[f"{method}/rep"] = fsdp(method, rep_grad=True)
    results["checkpointed"] = fsdp(
        "uw", optimizer="adam", lr=0.01, checkpointing=True, checkpoint_dir=str(out / "fsdp_checkpoints")
    )
    results["resumed"] = fsdp("uw", optimizer="adam", lr=0.01, resume_from=out / "one_process_adam.pt")
    results["after_fit"] = probe_after_fit(out, rank)
    for method in PARAM_METHODS:  # gradient methods on the shared parameters
        results[f"{method}/params"] = fsdp(method)
    for method in GRAMIAN_METHODS:  # (MGDA: in PARAM_METHODS above)
        if method not in PARAM_METHODS:
            results[f"{method}/params"] = fsdp(method)
    # Adam moves a parameter whose gradient is zero after its first step, not one whose gradient is None:
    # head b, which no rank's loss reaches on dsA's batches, must keep None as in one process.
    results["mgda/params/adam"] = fsdp("mgda", optimizer="adam", lr=0.01)
    results["mgda/params/whole_jacobian"] = whole_jacobian("mgda")
    results["mgda/params/sharded"] = sharded_mgda()
    results["mgda/params/units"] = runs._error(lambda: blocks_as_units("mgda"))
    results["modo/refused"] = runs._error(lambda: fsdp("modo"))  # draws extra batches in the backward
    results["blocks"] = blocks_as_units()
    results["raise"] = runs._error(
        lambda: Trainer(**runs.config("ew", strategy="fsdp", dist_timeout=TIMEOUT_S)).fit(
            runs.make_model(fail=("raise", 1, 2)), runs.make_loaders(runs.LOCAL_BATCH)
        )
    )
    results["nan"] = runs._error(
        lambda: Trainer(**runs.config("uw", strategy="fsdp", dist_timeout=TIMEOUT_S)).fit(
            runs.make_model(fail=("nan", 1, 3)), runs.make_loaders(runs.LOCAL_BATCH)
        )
    )
    results["after_failures"] = fsdp("ew")  # the process group and FSDP work on after both
    for method, rep_grad in HPS_RUNS:
        results[f"hps/{method}"] = hps_run(method, WORLD, rep_grad, strategy="fsdp", dist_timeout=TIMEOUT_S)
    return results


def worker(rank: int, port: int, out: str) -> None:
    """One rank of a torchrun-like launch: every scenario in the group the first fit creates."""
    torch.set_num_threads(1)
    path = Path(out)
    try:
        os.environ.update(
            MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank)
        )
        results = _scenarios(rank, path)
        results["kept_group"] = dist.is_initialized()
        close_process_group()
    except Exception:
        (path / f"failure{rank}.txt").write_text(traceback.format_exc())
        raise
    torch.save(results, path / f"rank{rank}.pt")
