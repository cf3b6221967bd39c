"""One-GPU check of strategy='fsdp' (world size 1, NCCL): not collected by pytest; run on a GPU machine.

    PYTHONPATH=src torchrun --standalone --nproc_per_node=1 tests/training/fsdp_gpu_check.py
    PYTHONPATH=src torchrun --standalone --nproc_per_node=1 tests/training/fsdp_gpu_check.py --device cpu  # smoke

Trains mtlkit's HPS (float64) under FSDP on the device and in one process on the same
batches (UW; MGDA at the representation; PCGrad on the shared parameters), compares parameters and scores, writes a
checkpoint under FSDP and loads it without a process group, and uses the model after fit.
Prints one line per check and exits 1 if any fails.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))
import fsdp_runs

from mtlkit import Trainer
from mtlkit.training import close_process_group
from mtlkit.training.checkpoint import load_checkpoint


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda")
    device = parser.parse_args().device
    failures = 0

    def check(name: str, ok: bool, detail: str = "") -> None:
        nonlocal failures
        failures += not ok
        print(f"{'PASS' if ok else 'FAIL'} {name} {detail}", flush=True)

    def train(strategy: str, weighting: str, rep_grad: bool, **options) -> tuple[torch.nn.Module, dict, Trainer]:
        model = fsdp_runs.hps_model(rep_grad)
        trainer = Trainer(**fsdp_runs.runs.config(weighting, strategy=strategy, device=device, **options))
        final = trainer.fit(model, fsdp_runs.runs.make_loaders(fsdp_runs.runs.LOCAL_BATCH * 2))
        return model, final, trainer

    with tempfile.TemporaryDirectory() as folder:
        for weighting, rep_grad in (("uw", False), ("mgda", True), ("pcgrad", False)):
            sharded, final, trainer = train("fsdp", weighting, rep_grad, checkpointing=True, checkpoint_dir=folder)
            backend = dist.get_backend()
            one, one_final, _ = train("single", weighting, rep_grad)
            diff = max(
                (a - b).abs().max().item() for a, b in zip(sharded.state_dict().values(), one.state_dict().values())
            )
            check(
                f"{weighting} rep_grad={rep_grad} ({backend}) equals one process", diff < 1e-8, f"max |diff| {diff:.2e}"
            )
            check(f"{weighting} scores equal", all(abs(final[k] - v) < 1e-8 for k, v in one_final.items()))
            check(
                f"{weighting} model back on {device}, not sharded",
                all(type(p) is torch.nn.Parameter and p.device.type == device for p in sharded.parameters()),
            )
            saved = load_checkpoint(Path(folder) / "last.pt")
            check(
                f"{weighting} checkpoint holds whole tensors",
                all(type(v) is torch.Tensor for v in saved["model"].values()),
            )
            x = fsdp_runs.runs.make_loaders(4)[2].dataset.X_dict["x"].to(device)
            outputs = sharded.task_outputs({"x": x}, ["a", "b", "c"])
            check(f"{weighting} model usable after fit", all(torch.isfinite(v).all().item() for v in outputs.values()))
            trainer.save(Path(folder) / "after.pt")
            check(f"{weighting} trainer.save after fit", (Path(folder) / "after.pt").is_file())
    close_process_group()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
