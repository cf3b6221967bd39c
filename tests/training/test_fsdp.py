"""FSDP2 training (strategy='fsdp'): 2 ranks (gloo on 127.0.0.1, float64) against 1 process on the same global batches.

One spawn runs every scenario (tests/training/fsdp_runs.py) and saves each rank's results;
the tests compare them with single-process runs made here.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from mtlkit import ConfigError, Trainer
from mtlkit.experiments.config import ExperimentConfig
from mtlkit.training import FSDPStrategy
from mtlkit.training.checkpoint import load_checkpoint

sys.path.insert(0, str(Path(__file__).parent))
import distributed_runs as runs
import fsdp_runs
from test_distributed import _assert_same_run, _free_ports

ADAM = {"optimizer": "adam", "lr": 0.01}


@pytest.fixture(scope="module")
def spawned(tmp_path_factory):
    """Both ranks' results (see `fsdp_runs._scenarios`) and their output folder."""
    out = tmp_path_factory.mktemp("fsdp")
    torch.set_num_threads(1)
    # The checkpoint that two FSDP ranks resume: one epoch of a one-process run with Adam (optimizer state).
    runs.run("uw", 1, n_epochs=1, checkpointing=True, checkpoint_dir=str(out / "one"), **ADAM)
    (out / "one" / "last.pt").rename(out / "one_process_adam.pt")
    context = mp.start_processes(
        fsdp_runs.worker, args=(_free_ports(1)[0], str(out)), nprocs=runs.WORLD, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + 300
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the spawned FSDP ranks did not finish in 300 s (a hang)")
    return [torch.load(out / f"rank{rank}.pt", weights_only=False) for rank in range(runs.WORLD)], out


@pytest.mark.parametrize("method", [*fsdp_runs.METHODS, *(f"{m}/rep" for m in fsdp_runs.REP_METHODS)])
def test_fsdp_ranks_train_exactly_as_one_process_on_the_global_batches(spawned, method):
    """Consecutive fits in one process group; each ends with one process's parameters, balancer state and scores."""
    (rank0, rank1), _ = spawned
    name = method.split("/")[0]
    one = runs.run(name, 1, rep_grad=method.endswith("/rep"))
    _assert_same_run(rank0[method], one)
    _assert_same_run(rank1[method], one)
    assert rank0["kept_group"] and rank1["kept_group"]


@pytest.mark.parametrize(("method", "rep_grad"), fsdp_runs.HPS_RUNS)
def test_an_architecture_that_skips_unlabelled_heads_trains_under_fsdp_as_one_process(spawned, method, rep_grad):
    """HPS runs a head only when the rank's batch labels its task: ranks differ in the heads they run."""
    (rank0, rank1), _ = spawned
    one = fsdp_runs.hps_run(method, 1, rep_grad)
    _assert_same_run(rank0[f"hps/{method}"], one)
    _assert_same_run(rank1[f"hps/{method}"], one)


def _assert_same_params_and_scores(result: dict, one: dict) -> None:
    for name, value in one["params"].items():
        torch.testing.assert_close(result["params"][name], value, rtol=1e-10, atol=1e-12)
    assert result["final"] == pytest.approx(one["final"], rel=1e-9)


def test_each_trunk_block_may_be_a_unit_of_its_own(spawned):
    (rank0, rank1), _ = spawned
    one = runs.run("ew", 1)
    for result in (rank0["blocks"], rank1["blocks"]):
        _assert_same_params_and_scores(result, one)


@pytest.mark.parametrize("method", fsdp_runs.PARAM_METHODS)
def test_gradient_methods_on_the_shared_parameters_train_under_fsdp_as_one_process(spawned, method):
    (rank0, rank1), _ = spawned
    one = runs.run(method, 1)
    _assert_same_run(rank0[f"{method}/params"], one)
    _assert_same_run(rank1[f"{method}/params"], one)


@pytest.mark.parametrize("method", fsdp_runs.GRAMIAN_METHODS)
def test_methods_defined_by_the_gramian_take_it_from_each_ranks_shard_of_the_task_gradients(spawned, method):
    """T backwards reduce-scattered by FSDP, partial Gramians of the shards summed (T×T): one process's run."""
    (rank0, rank1), _ = spawned
    one = runs.run(method, 1)
    for result in (rank0[f"{method}/params"], rank1[f"{method}/params"]):
        _assert_same_run(result, one)
        assert {"gramian", "update"} <= set(result["timings"])  # the T×T all-reduce and the norm's
        assert "jacobian" not in result["timings"]  # no whole Jacobian reduced


def test_the_sharded_gramian_leaves_no_gradient_on_a_parameter_no_rank_reaches(spawned):
    """With Adam, head b (no rank's loss reaches it on dsA's batches) moves unless its gradient is None."""
    (rank0, rank1), _ = spawned
    one = runs.run("mgda", 1, optimizer="adam", lr=0.01)
    _assert_same_run(rank0["mgda/params/adam"], one)
    _assert_same_run(rank1["mgda/params/adam"], one)


def test_the_whole_jacobian_path_stays_available_as_an_option(spawned):
    (rank0, rank1), _ = spawned
    one = runs.run("mgda", 1)
    for result in (rank0["mgda/params/whole_jacobian"], rank1["mgda/params/whole_jacobian"]):
        _assert_same_run(result, one)
        assert "jacobian" in result["timings"]


def test_the_gramian_from_each_ranks_slice_of_the_jacobian_gives_one_process_mgda(spawned):
    (rank0, rank1), _ = spawned
    one = runs.run("mgda", 1)
    for result in (rank0["mgda/params/sharded"], rank1["mgda/params/sharded"]):
        _assert_same_params_and_scores(result, one)
        assert {"jacobian", "gramian", "update"} <= set(result["timings"])  # reduce-scatter, T×T, all-gather


def test_gradient_method_on_shared_parameters_with_named_units_is_refused_with_what_to_do(spawned):
    (rank0, rank1), _ = spawned
    for result in (rank0["mgda/params/units"], rank1["mgda/params/units"]):
        assert result["type"] == "ConfigError"
        assert "MGDA" in result["message"] and "units=" in result["message"]
        assert "rep_grad=True" in result["message"] and "strategy='ddp'" in result["message"]


def test_a_method_that_draws_extra_batches_is_refused_with_what_to_do(spawned):
    (rank0, rank1), _ = spawned
    for result in (rank0["modo/refused"], rank1["modo/refused"]):
        assert result["type"] == "ConfigError"
        assert "MoDo" in result["message"] and "extra_train_batch" in result["message"]
        assert "strategy='ddp'" in result["message"]


def test_fsdp_checkpoint_holds_full_tensors_that_one_process_loads_and_resumes(spawned, tmp_path):
    (rank0, _), out = spawned
    written = load_checkpoint(out / "fsdp_checkpoints" / "last.pt")  # weights_only: plain tensors
    runs.run("uw", 1, checkpointing=True, checkpoint_dir=str(tmp_path), **ADAM)
    one = load_checkpoint(tmp_path / "last.pt")
    assert written["model"].keys() == one["model"].keys()
    for name, value in one["model"].items():
        assert type(written["model"][name]) is torch.Tensor
        torch.testing.assert_close(written["model"][name], value, rtol=1e-10, atol=1e-12)
    assert written["optimizer"]["state"].keys() == one["optimizer"]["state"].keys()
    for i, state in one["optimizer"]["state"].items():
        for key, value in state.items():
            torch.testing.assert_close(written["optimizer"]["state"][i][key], value, rtol=1e-9, atol=1e-12)
    resumed = runs.run("uw", 1, resume_from=out / "fsdp_checkpoints" / "last.pt", **ADAM)
    _assert_same_run(resumed, runs.run("uw", 1, **ADAM))
    _assert_same_run(rank0["checkpointed"], runs.run("uw", 1, checkpointing=True, checkpoint_dir=str(tmp_path), **ADAM))


def test_one_process_checkpoint_resumes_under_fsdp(spawned):
    (rank0, rank1), _ = spawned
    one = runs.run("uw", 1, **ADAM)
    _assert_same_run(rank0["resumed"], one)
    _assert_same_run(rank1["resumed"], one)


def test_after_fit_the_model_and_optimizer_are_the_users_again_and_scoring_uneven_shards_does_not_hang(spawned):
    (rank0, rank1), out = spawned
    model = runs.make_model()
    trainer = Trainer(**runs.config("uw", **ADAM))
    loaders = [*runs.make_loaders(runs.WORLD * runs.LOCAL_BATCH), runs.one_row_loader()]
    final = trainer.fit(model, loaders)
    assert "b/dsOne/test/mse" in final  # dsOne: 1 row, none on rank 1; dsV test: 9 rows, 2 batches vs 1
    with torch.no_grad():
        outputs = model.task_outputs(loaders[2].dataset.X_dict, ["a", "b", "c"])
    for result in (rank0["after_fit"], rank1["after_fit"]):
        assert result["final"] == pytest.approx(final, rel=1e-9, abs=1e-12)
        assert result["class"] == "Net" and result["sharded"] == []
        assert result["same_parameter"] and result["optimizer_params"]
        for task, value in outputs.items():
            torch.testing.assert_close(result["outputs"][task], value, rtol=1e-10, atol=1e-12)
    saved = load_checkpoint(out / "saved_after_fit.pt")  # written by rank 0 alone after fit
    for name, value in model.state_dict().items():
        torch.testing.assert_close(saved["model"][name], value, rtol=1e-10, atol=1e-12)


def test_fsdp_strategy_is_chosen_by_name_and_checks_its_units():
    assert type(Trainer(strategy="fsdp").strategy) is FSDPStrategy
    config = ExperimentConfig.from_dict({"trainer": {"strategy": "fsdp"}})
    assert type(Trainer(**config.trainer).strategy) is FSDPStrategy
    model = runs.make_model()
    with pytest.raises(ConfigError, match=r"no submodule \['trunk.9'\]"):
        FSDPStrategy(units=["trunk.9"])._unit_names(model)
    assert FSDPStrategy()._unit_names(model) == []  # the model is one unit
    assert FSDPStrategy(units=["trunk", "heads.a"])._unit_names(model) == ["trunk", "heads.a"]


def test_a_failure_on_one_rank_stops_every_rank_and_the_next_fit_runs(spawned):
    (rank0, rank1), _ = spawned
    assert rank1["raise"] == {"type": "ValueError", "message": "bad batch on rank 1"}
    assert rank0["raise"]["type"] == "RankFailure" and "bad batch on rank 1" in rank0["raise"]["message"]
    for result in (rank0["nan"], rank1["nan"]):
        assert result["type"] == "FloatingPointError" and "task(s) ['a']" in result["message"]
    one = runs.run("ew", 1)
    _assert_same_run(rank0["after_failures"], one)
    _assert_same_run(rank1["after_failures"], one)
