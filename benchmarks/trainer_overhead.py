"""The Trainer's own cost: Snorkel's tutorial fits against a plain PyTorch loop doing the same steps.

mtlkit side: `examples/snorkel_tutorial.py`'s two fits (circle + square, then circle +
square + inverse circle; 10 epochs, batch 32, Adam lr 0.02: 500 + 750 steps), with the
Trainer's defaults (shuffled batches over the datasets, validation scored every epoch, no
progress bar, gradient clipping at norm 1.0 as in Snorkel). Plain side: the same modules,
batches, optimizer, clipping and number of steps in a hand-written loop that also computes
each task's validation accuracy every epoch.

What only the mtlkit side does, and is timed: each step checks the batch's labels for
missing ones (one reduction and host read), reads the loss values and the clipped norm to
raise (naming the task) on a non-finite one, keeps the epoch's mean losses; each epoch
scores the validation loaders through `Scorer` (batch by batch as the loaders give them,
Snorkel's tie-break, a confusion matrix), and each fit ends by scoring the validation and
test loaders (the scores `fit` returns). The plain loop scores each validation split in
one forward (argmax accuracy) and scores nothing at the end. The "of which scoring"
columns time each side's scoring alone, so that the steps can be compared without it.

- warm: both sides alternate `--repeats` times in one process (after one untimed round);
  each figure is the median.
- cold: each repetition is a fresh process that imports torch (and mtlkit) untimed and
  then runs the two fits once, so first-use costs (lazy imports, first scoring) count.
- `--profile`: cProfile of one warm mtlkit run, the top functions by own time.
- `--device cuda`: both sides train on the GPU (batches moved per step, as the Trainer
  does; each fit ends with a device synchronisation); use `--clock wall` there.

Times are process CPU time (`time.process_time`, all threads), so waiting for a core on a
busy machine is not counted; `--clock wall` for wall time.

Run: python benchmarks/trainer_overhead.py [--repeats 5] [--cold-repeats 3] [--threads default] [--clock wall]
     [--device cuda] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
N, EPOCHS, BATCH, LR, SEED = 1000, 10, 32, 0.02, 123


def _data():
    import torch

    from mtlkit.data.tutorial import make_circle_dataset, make_inv_circle_dataset, make_square_dataset

    torch.manual_seed(SEED)
    return {
        "circle": make_circle_dataset(N),
        "square": make_square_dataset(N),
        "inv_circle": make_inv_circle_dataset(N),
    }


def _synchronize(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def mtlkit_fits(clock, device: str = "cpu") -> tuple[float, float]:
    """The tutorial's two fits with mtlkit; seconds in all, and of which scoring (per epoch and at the end)."""
    sys.path.insert(0, str(ROOT / "examples"))
    import torch.nn.functional as F
    from snorkel_tutorial import make_dataloaders
    from torch import nn

    from mtlkit import MultitaskClassifier, Operation, Task, Trainer

    data = _data()
    loaders = {name: make_dataloaders(name, splits, BATCH) for name, splits in data.items()}
    base = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 4), nn.ReLU())

    def task(name):
        return Task(
            name=f"{name}_task",
            module_pool=nn.ModuleDict({"base_mlp": base, f"{name}_head": nn.Linear(4, 2)}),
            op_sequence=[Operation("base_mlp", [("_input_", f"{name}_data")]), Operation(f"{name}_head", ["base_mlp"])],
            loss_func=F.cross_entropy,
        )

    tasks = [task(name) for name in data]
    scoring = [0.0]
    start = clock()
    trainer = Trainer(n_epochs=EPOCHS, lr=LR, progress_bar=False, device=device)
    score = trainer.strategy.score

    def timed_score(*args):
        began = clock()
        try:
            return score(*args)
        finally:
            scoring[0] += clock() - began

    trainer.strategy.score = timed_score  # type: ignore[method-assign]
    trainer.fit(MultitaskClassifier(tasks[:2]), loaders["circle"] + loaders["square"])
    trainer.fit(MultitaskClassifier(tasks), [loader for name in data for loader in loaders[name]])
    _synchronize(device)
    return clock() - start, scoring[0]


def plain_fits(clock, device: str = "cpu") -> tuple[float, float]:
    """The same steps in a plain PyTorch loop (shuffled batches, Adam, per-epoch validation accuracy);
    seconds in all, and of which the validation accuracy."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    data = _data()
    base = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 4), nn.ReLU()).to(device)
    heads = {name: nn.Linear(4, 2).to(device) for name in data}
    scoring = 0.0
    start = clock()
    for names in (["circle", "square"], list(data)):
        params = list(base.parameters()) + [p for name in names for p in heads[name].parameters()]
        optimizer = torch.optim.Adam(params, lr=LR)
        for _ in range(EPOCHS):
            batches = []
            for k, name in enumerate(names):
                X, Y = data[name][0]
                order = torch.randperm(len(X))
                batches += [(k, order[i : i + BATCH]) for i in range(0, len(X), BATCH)]
            for j in torch.randperm(len(batches)).tolist():
                k, index = batches[j]
                X, Y = data[names[k]][0]
                optimizer.zero_grad()
                x, y = X[index].to(device), Y[index].to(device)
                loss = F.cross_entropy(heads[names[k]](base(x)), y)
                loss.backward()
                nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
            began = clock()
            with torch.no_grad():
                for name in names:
                    X, Y = data[name][1]
                    (heads[name](base(X.to(device))).argmax(dim=1) == Y.to(device)).float().mean().item()
            scoring += clock() - began
    _synchronize(device)
    return clock() - start, scoring


SIDES = {"mtlkit": mtlkit_fits, "plain": plain_fits}


def _clock(name: str):
    return time.process_time if name == "cpu" else time.perf_counter


def _cold(side: str, args) -> tuple[float, float]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, __file__, "--one", side, "--clock", args.clock, "--threads", args.threads]
    command += ["--device", args.device]
    out = subprocess.run(command, capture_output=True, text=True, timeout=1800, env=env, check=True)
    total, scoring = out.stdout.strip().splitlines()[-1].split()
    return float(total), float(scoring)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cold-repeats", type=int, default=3)
    parser.add_argument("--threads", default="default", help="'default' or a number of torch threads")
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    parser.add_argument("--device", default="cpu", help="where both sides train: cpu (default) or cuda")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--one", choices=list(SIDES), help=argparse.SUPPRESS)  # a cold run, in a child process
    args = parser.parse_args()
    import torch

    if args.threads != "default":
        torch.set_num_threads(int(args.threads))
    clock = _clock(args.clock)
    if args.one:
        if args.one == "mtlkit":
            import mtlkit  # noqa: F401 - the import is not what is timed
        print(*SIDES[args.one](clock, args.device))
        return
    for fits in SIDES.values():
        fits(clock, args.device)  # warm-up: imports, first scoring
    warm: dict[str, list[tuple[float, float]]] = {side: [] for side in SIDES}
    for _ in range(args.repeats):
        for side, fits in SIDES.items():
            warm[side].append(fits(clock, args.device))
    cold: dict[str, list[tuple[float, float]]] = {side: [] for side in SIDES}
    for _ in range(args.cold_repeats):
        for side in SIDES:
            cold[side].append(_cold(side, args))
    print(
        f"Measured {time.strftime('%Y-%m-%d %H:%M')} UTC, torch {torch.__version__}, {torch.get_num_threads()} "
        f"threads, {'process CPU time' if args.clock == 'cpu' else 'wall time'}, device {args.device}; "
        "two fits, 1,250 steps of batch 32.\n"
    )
    print(
        "| run | plain loop (s) | of which scoring | mtlkit Trainer (s) | of which scoring | ratio | "
        "ratio without scoring |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, runs in (
        (f"warm (median of {args.repeats})", warm),
        (f"cold, fresh process (median of {args.cold_repeats})", cold),
    ):
        if not runs["plain"]:  # --repeats 0 or --cold-repeats 0
            continue
        (plain, plain_scoring), (ours, our_scoring) = (
            [statistics.median(run[k] for run in runs[side]) for k in (0, 1)] for side in ("plain", "mtlkit")
        )
        print(
            f"| {label} | {plain:.2f} | {plain_scoring:.2f} | {ours:.2f} | {our_scoring:.2f} | {ours / plain:.2f}× | "
            f"{(ours - our_scoring) / (plain - plain_scoring):.2f}× |"
        )
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        mtlkit_fits(clock, args.device)
        profiler.disable()
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(25)
        print("\ncProfile of one warm mtlkit run (top 25 by own time):\n")
        print(text.getvalue())


if __name__ == "__main__":
    main()
