"""Every registered balancer trains on a CUDA device to the parameters it reaches on the CPU.

HPS in float64, both modes (shared parameters and `rep_grad`), a few Trainer steps; the CUDA run
must end where the CPU run ends, up to float64 rounding (reductions run in another order on the
GPU). Skipped without CUDA. `MTLKIT_TEST_DEVICE=cpu` runs the same comparison CPU against CPU,
which checks the test itself on a machine without a GPU.
"""

import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mtlkit import DictDataLoader, DictDataset, Scorer, Trainer
from mtlkit.architectures import HPS
from mtlkit.weighting import available, get

DEVICE = os.environ.get("MTLKIT_TEST_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(
    DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA device (or MTLKIT_TEST_DEVICE=cpu)"
)

# Methods that draw random numbers: the CPU and CUDA generators give different streams, so the
# two runs only have to train (finite losses, moved parameters), not to agree.
RANDOM = {"graddrop", "pcgrad", "rlw"}
OPTIONS = {"krum": {"n_selected": 2}}


def _model(rep_grad: bool) -> HPS:
    torch.manual_seed(0)
    model = HPS(
        ["a", "b", "c"],
        encoder_class=lambda: nn.Sequential(nn.Linear(4, 8), nn.ReLU()),
        decoders={"a": nn.Linear(8, 2), "b": nn.Linear(8, 1), "c": nn.Linear(8, 1)},
        rep_grad=rep_grad,
        losses={"a": F.cross_entropy, "b": F.mse_loss, "c": F.mse_loss},
        metrics={"a": Scorer(metrics=["accuracy"])},
        input_key="x",
    )
    return model.double()


def _loaders() -> list[DictDataLoader]:
    generator = torch.Generator().manual_seed(0)
    X = torch.randn(96, 4, generator=generator, dtype=torch.float64)
    Y = {"a": (X[:, 0] > 0).long(), "b": X[:, 1] - X[:, 2], "c": X[:, 3]}
    train = DictDataset("toy", "train", {"x": X[:64]}, {k: v[:64] for k, v in Y.items()})
    valid = DictDataset("toy", "valid", {"x": X[64:]}, {k: v[64:] for k, v in Y.items()})
    return [DictDataLoader(train, batch_size=16, shuffle=True, seed=0), DictDataLoader(valid, batch_size=32)]


def _train(method: str, rep_grad: bool, device: str) -> tuple[list[torch.Tensor], Trainer]:
    model = _model(rep_grad)
    weighting = (method, OPTIONS[method]) if method in OPTIONS else method
    trainer = Trainer(n_epochs=2, lr=0.02, weighting=weighting, device=device, progress_bar=False, seed=0)
    trainer.fit(model, _loaders())
    return [p.detach().to("cpu") for p in model.parameters()], trainer


@pytest.mark.parametrize("rep_grad", [False, True])
@pytest.mark.parametrize("method", available(aliases=False))
def test_method_on_the_device_ends_where_the_cpu_run_ends(method, rep_grad):
    if rep_grad and not getattr(type(get(method, tasks=["a", "b", "c"])), "supports_shared_reps", True):
        pytest.skip(f"{method} has no representation mode")
    on_cpu, _ = _train(method, rep_grad, "cpu")
    on_device, trainer = _train(method, rep_grad, DEVICE)
    assert trainer.step == 8
    assert all(bool(torch.isfinite(p).all()) for p in on_device)
    if method in RANDOM and DEVICE != "cpu":
        start = [p.detach() for p in _model(rep_grad).parameters()]
        assert any(not torch.equal(a, b) for a, b in zip(start, on_device))
        return
    worst = max(float(((a - b).abs() / (1e-8 + b.abs())).max()) for a, b in zip(on_device, on_cpu))
    assert worst < 1e-6, f"{method} (rep_grad={rep_grad}): largest relative difference to the CPU run {worst:.2e}"
