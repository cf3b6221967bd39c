"""Multi-process training: 2 ranks (gloo on 127.0.0.1) against 1 process on the same global batches.

One spawn runs every multi-process scenario (tests/training/distributed_runs.py) and
saves each rank's results; the tests compare them with single-process runs made here.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from mtlkit import ConfigError, DictDataLoader, DictDataset, Scorer, Trainer, metrics
from mtlkit.experiments.config import ExperimentConfig
from mtlkit.training import DDPStrategy, SingleProcess, TrainerConfig
from mtlkit.training.distributed import is_main_process, shard_evaluation_loader, shard_training_loader
from mtlkit.weighting import is_registered

sys.path.insert(0, str(Path(__file__).parent))
import distributed_runs as runs  # importable by name: the spawned ranks import it too

TIGHT = {"rtol": 1e-10, "atol": 1e-12}


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.fixture(scope="module")
def spawned(tmp_path_factory):
    """Both ranks' results (see `distributed_runs._scenarios`) and their output folder."""
    out = tmp_path_factory.mktemp("ddp")
    torch.set_num_threads(1)
    # The checkpoint that two ranks resume: one epoch of a one-process run.
    runs.run("uw", 1, n_epochs=1, checkpointing=True, checkpoint_dir=str(out / "one"))
    (out / "one" / "last.pt").rename(out / "one_process.pt")
    context = mp.start_processes(
        runs.worker, args=(tuple(_free_ports(2)), str(out)), nprocs=runs.WORLD, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + 240
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the spawned ranks did not finish in 240 s (a hang)")
    return [torch.load(out / f"rank{rank}.pt", weights_only=False) for rank in range(runs.WORLD)], out


def _assert_same_run(two, one):
    for name, value in one["params"].items():
        torch.testing.assert_close(two["params"][name], value, **TIGHT, msg=f"parameter {name}")
    for name, value in one["balancer"].items():
        torch.testing.assert_close(two["balancer"][name], value, **TIGHT, msg=f"balancer state {name}")
    assert two["step"] == one["step"]
    assert two["final"].keys() == one["final"].keys()
    for key, value in one["final"].items():
        assert two["final"][key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    for two_record, one_record in zip(two["history"], one["history"], strict=True):
        for key, value in one_record.items():
            assert two_record[key] == pytest.approx(value, rel=1e-9), key


@pytest.mark.parametrize(
    "method",
    [
        *runs.METHODS,
        *(f"{m}/rep" for m in runs.REP_METHODS),
        *(f"{m}/sharded" for m in runs.SHARDED_METHODS),
        *(f"{m}/unoverlapped" for m in runs.UNOVERLAPPED_METHODS),
        *(f"{m}/uneven" for m in runs.UNEVEN_METHODS),
    ],
)
def test_two_ranks_train_exactly_as_one_process_on_the_global_batches(spawned, method):
    name, mode = method.split("/") if "/" in method else (method, "")
    if not is_registered(name.split("@")[0]):
        pytest.skip(f"balancer {name!r} is not registered yet")
    (rank0, rank1), _ = spawned
    one = runs.run(name, 1, rep_grad=mode in ("rep", "uneven"), uneven=mode == "uneven")
    _assert_same_run(rank0[method], one)
    _assert_same_run(rank1[method], one)  # every rank holds the same model and balancer state


def test_trainer_creates_the_process_group_from_torchrun_variables_and_keeps_it_for_the_next_fits(spawned):
    """Three fits in a row in one process (the second used to hang), each equal to one process."""
    (rank0, rank1), _ = spawned
    for key, method in (("env", "ew"), ("env/again", "mgda"), ("env/third", "uw")):
        one = runs.run(method, 1)
        _assert_same_run(rank0[key], one)
        _assert_same_run(rank1[key], one)
    assert rank0["env/kept_group"] and rank1["env/kept_group"]
    assert rank0["env/closed"] and rank1["env/closed"]  # close_process_group() ends the group mtlkit made


def test_a_process_group_the_script_created_is_used_and_never_destroyed(spawned):
    (rank0, rank1), _ = spawned
    assert rank0["user/kept_group"] and rank1["user/kept_group"]
    _assert_same_run(rank0["auto"], runs.run("pcgrad", 1))


def test_methods_that_need_the_rows_at_the_representation_gather_them_and_the_others_sum_gramians(spawned):
    (rank0, _), _ = spawned
    for method in ("db_mtl/rep", "graddrop/rep", "metabalance@every=2/rep", "trimmed_mean/uneven"):
        assert "rows" in rank0[method]["timings"] and "gramian" not in rank0[method]["timings"], method
    for method in ("pcgrad/rep", "gradvac/rep", "mgda/uneven"):
        assert "gramian" in rank0[method]["timings"] and "rows" not in rank0[method]["timings"], method


def test_a_wrapper_of_a_method_without_weights_raises_on_every_rank_as_in_one_process(spawned):
    (rank0, rank1), _ = spawned
    with pytest.raises(ConfigError) as one:
        runs.run("db_mtl@every=2", 1, rep_grad=True)
    for result in (rank0["db_mtl@every=2/rep"], rank1["db_mtl@every=2/rep"]):
        assert result == {"type": "ConfigError", "message": str(one.value)}


def test_a_validation_loader_that_cannot_be_sharded_is_refused_on_every_rank_before_training(spawned):
    (rank0, rank1), _ = spawned
    for result in (rank0["auto_lambda/custom_sampler"], rank1["auto_lambda/custom_sampler"]):
        assert result["type"] == "ConfigError"
        assert "AutoLambda draws validation batches from each rank's shard" in result["message"]
        assert "'dsV' (split 'valid')" in result["message"] and "without a custom sampler" in result["message"]


def test_ddp_averages_the_model_gradients_except_where_a_gradient_method_needs_them_first(spawned):
    (rank0, _), _ = spawned
    assert set(rank0["ew"]["timings"]) <= {"setup", "losses", "evaluation"}  # no hand-written gradient averaging
    assert {"jacobian", "gradients"} <= set(rank0["mgda"]["timings"])  # gloo: the averaged J
    assert "update" not in rank0["mgda"]["timings"]
    # Sharded: J's columns reduce-scattered, partial Gramians summed, the update gathered.
    assert {"jacobian", "gramian", "update", "gradients"} <= set(rank0["mgda/sharded"]["timings"])
    # At a representation: the T×T Gramian all-reduced, then one backward through DDP averages the rest.
    assert "gramian" in rank0["mgda/rep"]["timings"] and "gradients" not in rank0["mgda/rep"]["timings"]


def test_scores_from_reduced_metric_states_equal_one_process_scoring(spawned):
    (rank0, rank1), _ = spawned
    torch.manual_seed(0)
    one = metrics.score(runs.RichNet().double(), runs.make_loaders(4)[2:])
    assert "a/dsV/valid/roc_auc" in one and "b/dsV/test/spread" in one and "c/dsV/test/recall" in one
    one_row = metrics.score(runs.make_model(), [runs.one_row_loader()])  # rank 1 holds none of it
    assert "b/dsOne/test/mse" in one_row
    for expected, key in ((one, "scores"), (one_row, "scores/one")):
        for scores in (rank0[key], rank1[key]):
            assert scores.keys() == expected.keys()
            for name, value in expected.items():
                assert scores[name] == pytest.approx(value, rel=1e-6, abs=1e-12), name


def test_only_rank_0_logs_and_writes_checkpoints(spawned):
    _, out = spawned
    assert (out / "logs0" / "log.jsonl").is_file() and (out / "checkpoints0" / "last.pt").is_file()
    assert not (out / "logs1").exists() and not (out / "checkpoints1").exists()
    records = [json.loads(line) for line in (out / "logs0" / "log.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 6  # global steps: 48 rows, global batch 8


def test_checkpoint_of_two_ranks_resumes_on_one_process(spawned):
    _, out = spawned
    resumed = runs.run("uw", 1, resume_from=out / "checkpoints0" / "last.pt")
    _assert_same_run(resumed, runs.run("uw", 1))


def test_checkpoint_of_one_process_resumes_on_two_ranks(spawned):
    (rank0, rank1), _ = spawned
    one = runs.run("uw", 1)
    _assert_same_run(rank0["resumed"], one)
    _assert_same_run(rank1["resumed"], one)


def test_exception_on_one_rank_stops_every_rank_with_its_message(spawned):
    (rank0, rank1), _ = spawned
    assert rank1["raise"] == {"type": "ValueError", "message": "bad batch on rank 1"}
    assert rank0["raise"]["type"] == "RankFailure"
    assert "rank 1: ValueError: bad batch on rank 1" in rank0["raise"]["message"]


def test_nonfinite_loss_on_one_rank_raises_on_every_rank(spawned):
    (rank0, rank1), _ = spawned
    for result in (rank0["nan"], rank1["nan"]):
        assert result["type"] == "FloatingPointError"
        assert "task(s) ['a']" in result["message"] and "step 3" in result["message"]


# ---------------------------------------------------------------------- without a process group


def _dataset(n):
    return DictDataset("ds", "train", {"x": torch.arange(n)}, {"t": torch.arange(n)})


def _indices(loader):
    return [batch[0]["x"].tolist() for batch in loader]


@pytest.mark.parametrize("epoch", [0, 1])
def test_training_shards_together_hold_the_one_process_batches_of_each_epoch(epoch):
    one = DictDataLoader(_dataset(24), batch_size=6, shuffle=True, seed=3)
    shards = [
        shard_training_loader(DictDataLoader(_dataset(24), batch_size=3, shuffle=True, seed=99), 2, r, 3)
        for r in range(2)
    ]
    for loader in (one, *shards):
        loader.set_epoch(epoch)
    merged = [sorted(a + b) for a, b in zip(*map(_indices, shards), strict=True)]
    assert merged == [sorted(batch) for batch in _indices(one)]


def test_training_shards_of_an_uneven_dataset_pad_by_wrapping_like_distributed_sampler():
    shards = [shard_training_loader(DictDataLoader(_dataset(5), batch_size=2), 2, r, None) for r in range(2)]
    seen = [x for loader in shards for batch in _indices(loader) for x in batch]
    assert sorted(seen) == [0, 0, 1, 2, 3, 4]  # 3 per rank; example 0 fills the gap


def test_evaluation_shards_score_every_example_once():
    loader = DictDataLoader(_dataset(7), batch_size=2)
    seen = [x for r in range(3) for batch in _indices(shard_evaluation_loader(loader, 3, r)) for x in batch]
    assert sorted(seen) == list(range(7))


def test_a_loader_with_a_custom_sampler_cannot_be_sharded():
    loader = DictDataLoader(_dataset(4), sampler=[0, 1, 2, 3], batch_size=2)
    with pytest.raises(ConfigError, match="without a custom sampler"):
        shard_training_loader(loader, 2, 0, None)


def test_distributed_without_torchrun_or_process_group_is_a_config_error(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match="torchrun"):
        Trainer(distributed=True, progress_bar=False).fit(runs.make_model(), runs.make_loaders(4))


def test_main_process_is_rank_0_of_the_launch(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    assert not is_main_process()
    monkeypatch.setenv("RANK", "0")
    assert is_main_process()


def test_a_score_state_updated_batch_by_batch_equals_one_scoring_of_all_rows():
    g = torch.Generator().manual_seed(0)
    golds = torch.randint(0, 3, (40,), generator=g)
    golds[::7] = -1  # abstains
    probs = torch.softmax(torch.randn(40, 3, generator=g, dtype=torch.float64), dim=1)
    scorer = Scorer(
        ["accuracy", "f1", "matthews_corrcoef", "roc_auc", "coverage"],
        custom_metric_funcs={"n": lambda golds, preds, probs: float(len(golds))},
    )
    state = scorer.state(3)
    for rows in torch.arange(40).split(9):
        state.update(golds[rows], probs[rows].argmax(1), probs[rows])
    assert state.compute() == pytest.approx(scorer.score(golds, probs.argmax(1), probs), rel=1e-6)
    assert state.compute()["n"] == 34

    targets = torch.randn(30, generator=g, dtype=torch.float64)
    values = targets + 0.3 * torch.randn(30, generator=g, dtype=torch.float64)
    regression = Scorer(["mse", "mae", "r2"])
    state = regression.state(None)
    for rows in torch.arange(30).split(7):
        state.update(targets[rows], values[rows])
    assert state.compute() == pytest.approx(regression.score(targets, values), rel=1e-12)


def test_strategy_option_picks_the_strategy_and_checks_its_value(monkeypatch):
    for name in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert type(Trainer().strategy) is SingleProcess
    assert type(Trainer(strategy="auto").strategy) is SingleProcess  # no torchrun, no process group
    assert type(Trainer(distributed=True).strategy) is DDPStrategy
    assert type(Trainer(strategy="ddp").strategy) is DDPStrategy
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert type(Trainer(strategy="auto").strategy) is DDPStrategy  # launched by torchrun
    with pytest.raises(ConfigError, match="strategy='single' contradicts distributed=True"):
        Trainer(strategy="single", distributed=True)
    with pytest.raises(ConfigError, match="strategy"):
        Trainer(strategy="dp")


def test_yaml_trainer_section_accepts_a_strategy():
    config = ExperimentConfig.from_dict({"trainer": {"strategy": "auto"}})
    assert TrainerConfig.from_dict(dict(config.trainer)).strategy == "auto"
    with pytest.raises(ConfigError, match=r"trainer: .*strategy"):
        ExperimentConfig.from_dict({"trainer": {"strategy": "fdsp"}})


class _ThreadRank:
    """Collectives of one of `world_size` threads that stand for processes (exchanging through `shared`)."""

    shards_jacobian = reduces_in_backward = False

    def __init__(self, rank: int, world_size: int, shared: dict) -> None:
        self.rank, self.world_size, self.shared = rank, world_size, shared

    def _exchange(self, tensor):
        board = self.shared.setdefault(self.shared["round"][self.rank], [None] * self.world_size)
        self.shared["round"][self.rank] += 1
        board[self.rank] = tensor.clone()
        self.shared["barrier"].wait()
        return list(board)

    def all_reduce_sum(self, tensor, kind):
        tensor.copy_(sum(self._exchange(tensor)))

    def all_gather(self, output, input, kind):
        output.copy_(torch.cat(self._exchange(input)))


@pytest.mark.parametrize("method", ["graddrop", "trimmed_mean", "db_mtl"])
def test_rows_gathered_from_ranks_of_unequal_batches_give_the_one_process_gradient(method):
    """Rank 0 holds samples 0, 2, 4 of the global batch and rank 1 samples 1, 3 (a strided split of 5):
    the mean over ranks of the trunk's gradients equals one process's, at two representations."""
    import threading

    from mtlkit.weighting import get

    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 4, generator=g, dtype=torch.float64)
    heads = [torch.randn(3 + 2, generator=g, dtype=torch.float64) for _ in range(3)]

    def step(rows, collectives=None):
        W = torch.linspace(-1, 1, 4 * 5, dtype=torch.float64).view(4, 5).requires_grad_()
        z = x[rows] @ W
        reps = [torch.tanh(z[:, :3]), torch.sin(z[:, 3:])]  # widths 3 and 2
        losses = []
        for head in heads:
            mine = ((torch.cat(reps, dim=1) @ head) ** 2).sum() / 5  # this rank's share of the mean over 5
            if collectives is None:
                losses.append(mine)
            else:  # the strategy's surrogate: value the global loss, gradient world_size × the share
                total = mine.detach().clone()
                collectives.all_reduce_sum(total, "losses")
                losses.append(2 * mine - (2 * mine).detach() + total)
        balancer = get(method, tasks=3, **({"seed": 3} if method == "graddrop" else {}))
        balancer.backward(losses, shared_reps=reps, collectives=collectives)
        return W.grad

    one = step(torch.arange(5))
    shared = {"round": [0, 0], "barrier": threading.Barrier(2, timeout=30)}
    grads = [None, None]

    def rank(r):
        grads[r] = step(torch.arange(r, 5, 2), _ThreadRank(r, 2, shared))

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert all(grad is not None for grad in grads), "a rank failed (see the thread's traceback above)"
    torch.testing.assert_close((grads[0] + grads[1]) / 2, one, **TIGHT)


def test_representations_of_different_widths_on_the_ranks_raise_on_every_rank():
    import threading

    from mtlkit.weighting import get

    shared = {"round": [0, 0], "barrier": threading.Barrier(2, timeout=30)}
    errors = [None, None]

    def rank(r):
        h = torch.randn(3, 4 + r, dtype=torch.float64, requires_grad=True).tanh()
        losses = [(h * (t + 1)).sum() for t in range(3)]
        try:
            get("graddrop", tasks=3).backward(losses, shared_reps=h, collectives=_ThreadRank(r, 2, shared))
        except ValueError as error:
            errors[r] = str(error)

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for message in errors:
        assert message is not None and "shared_reps[0] holds [4, 5] values per sample" in message
