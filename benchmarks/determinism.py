"""Same seed, same code, same machine: are two training runs bit-identical?

Trains one seeded `Trainer.fit` (a float32 MLP trunk with T linear heads, every batch labelling
every task) in fresh subprocesses and compares the final parameters bit for bit:

- `--method graddrop` (a method that takes the task Jacobian itself on the shared parameters,
  via `mtlkit.weighting.jacobian.jacobian`), once as is and once with the Jacobian's rows forced
  the other way (one batched backward vs one backward per task, `--force batched|per-task`
  patches `jacobian` to pass `chunk_size=T` or `chunk_size=1`): the two ways round float32
  differently, so the forced run shows what a run would get if the engine chose the other way;
- `--method mgda --threads 2` twice as is: the Gramian path at torch's 2 threads.

Run: python benchmarks/determinism.py [--method graddrop] [--threads 2] [--tasks 3] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import subprocess
import sys

WORKER = r"""
import sys, torch, torch.nn.functional as F
from torch import nn
from mtlkit import DictDataLoader, DictDataset, Scorer, Trainer
from mtlkit.training import StepOutput
import mtlkit.weighting.jacobian as jac
from mtlkit.weighting import get

method, threads, tasks, force, device = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
torch.set_num_threads(threads)
if force != "none":
    original = jac.jacobian

    def forced(losses, inputs, *, chunk_size=None, retain_graph=True):
        T = len(losses)
        return original(losses, inputs, chunk_size=T if force == "batched" else 1, retain_graph=retain_graph)

    jac.jacobian = forced
    import mtlkit.weighting.base as base
    base.jacobian = forced


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh())
        self.heads = nn.ModuleDict({f"t{i}": nn.Linear(64, 3) for i in range(tasks)})

    @property
    def task_names(self):
        return list(self.heads)

    def training_step(self, X, Y):
        h = self.trunk(X["x"])
        return StepOutput({t: F.cross_entropy(self.heads[t](h), y) for t, y in Y.items()})

    def shared_parameters(self):
        return list(self.trunk.parameters())

    def task_outputs(self, X, task_names):
        h = self.trunk(X["x"])
        return {t: F.softmax(self.heads[t](h), dim=1) for t in task_names}

    def scorers(self):
        return {t: Scorer(metrics=["accuracy"]) for t in self.heads}


g = torch.Generator().manual_seed(0)
x = torch.randn(256, 16, generator=g)
Y = {f"t{i}": torch.randint(0, 3, (256,), generator=g) for i in range(tasks)}
loader = DictDataLoader(DictDataset("d", "train", {"x": x}, Y), batch_size=32, shuffle=True, seed=0)
torch.manual_seed(0)
model = Net()
Trainer(n_epochs=3, lr=0.05, seed=0, weighting=get(method, tasks=list(Y)), progress_bar=False, device=device).fit(model, [loader])
flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).cpu()
sys.stdout.write(flat.numpy().tobytes().hex())
"""


def run(method: str, threads: int, tasks: int, device: str, force: str = "none") -> bytes:
    """The final parameters (float32 bytes) of one fresh-process fit."""
    done = subprocess.run(
        [sys.executable, "-c", WORKER, method, str(threads), str(tasks), force, device],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    return bytes.fromhex(done.stdout)


def compare(a: bytes, b: bytes) -> str:
    import numpy as np

    x, y = np.frombuffer(a, np.float32), np.frombuffer(b, np.float32)
    differ = int((x != y).sum())
    if not differ:
        return f"bit-identical ({x.size} parameters)"
    gap = float(np.abs(x - y).max())
    return f"{differ} of {x.size} parameters differ, max |diff| {gap:.3e} (max |p| {float(np.abs(x).max()):.3g})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="graddrop")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tasks", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    plain = run(args.method, args.threads, args.tasks, args.device)
    print(
        f"{args.method}, {args.threads} threads, two fresh runs: {compare(plain, run(args.method, args.threads, args.tasks, args.device))}"
    )
    for force in ("batched", "per-task"):
        forced = run(args.method, args.threads, args.tasks, args.device, force)
        print(f"{args.method}, {args.threads} threads, as is vs rows forced {force}: {compare(plain, forced)}")


if __name__ == "__main__":
    main()
