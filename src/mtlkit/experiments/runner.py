"""Run one experiment: build it, train it, score it, and write its run folder.

A run folder holds `config.yaml` (the resolved config), `logs/` (JSON lines and, when
TensorBoard is installed, its events), `checkpoints/` (`last.pt`, `best.pt`),
`graph.png`, `curves.png` and `results.md`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from mtlkit import metrics
from mtlkit.architectures import Architecture
from mtlkit.data.datasets import LoadedDataset
from mtlkit.errors import ConfigError
from mtlkit.experiments.build import build_loaders, build_model, load_data, model_graph, select_tasks
from mtlkit.experiments.config import ExperimentConfig, load_config, weighting_spec
from mtlkit.experiments.report import plot_curves, scores_table
from mtlkit.experiments.run_folder import claim_run_folder, release_unstarted
from mtlkit.graph import MTLModel
from mtlkit.training import Trainer, is_main_process
from mtlkit.training.checkpoint import load_checkpoint


@dataclass
class RunResult:
    """The final validation/test scores of a run, its per-epoch history and its timing."""

    config: ExperimentConfig
    scores: dict[str, float]
    history: list[dict[str, float]]
    seconds_per_epoch: float
    model: Architecture | MTLModel
    run_dir: Path | None = None


def run(
    config: ExperimentConfig,
    run_dir: str | Path | None = None,
    progress_bar: bool = True,
    loaded: LoadedDataset | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> RunResult:
    """Train and score `config`; with `run_dir`, also log, checkpoint and write the run folder.

    `loaded` is `load_data(config)` when the caller already has it (the suite runs many
    variants on one dataset and seed). A `run_dir` that already holds a run is refused
    unless `resume` (continue from its `checkpoints/last.pt`, same data and model) or
    `overwrite` (replace it); while a process writes a run folder, no other can.
    """
    torch.manual_seed(config.seed)
    loaded = load_data(config) if loaded is None else loaded
    tasks = select_tasks(loaded.info, config.data)
    loaders = build_loaders(loaded, tasks, config.data.batch_size, config.seed)
    model = build_model(config, loaded.info, tasks)
    name, options = weighting_spec(config.weighting)
    trainer_options: dict[str, Any] = {"progress_bar": progress_bar, **config.trainer}
    trainer_options.update(weighting=(name, options), seed=config.seed)
    if launched_by_torchrun():
        if config.trainer.get("distributed") is False:
            raise ConfigError("trainer.distributed is false, but this process was launched by torchrun")
        trainer_options["distributed"] = True
    main = is_main_process()
    with contextlib.ExitStack() as stack:
        resume_from = None
        if run_dir is not None:
            run_dir = Path(run_dir)
            if main:  # under torchrun only rank 0 writes; the Trainer does the same for logs and checkpoints
                resume_from = stack.enter_context(claim_run_folder(run_dir, config.to_dict(), resume, overwrite))
                (run_dir / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
            elif resume:
                resume_from = run_dir / "checkpoints" / "last.pt"
            writers = ["json", "tensorboard"] if importlib.util.find_spec("tensorboard") else ["json"]
            first = tasks[0]
            info = loaded.info.tasks[first]
            # the valid loader that labels the first task names the key (one dataset per task in circles_squares)
            source = next(
                (d.name for d in (lo.dataset for lo in loaders) if d.split == "valid" and first in d.Y_dict),
                loaded.info.name,
            )
            best = f"{first}/{source}/valid/{info.metric}:{'max' if info.higher_is_better else 'min'}"
            trainer_options = {
                "logging": True,
                "log_writers": writers,
                "log_dir": str(run_dir / "logs"),
                "checkpointing": True,
                "checkpoint_dir": str(run_dir / "checkpoints"),
                "checkpoint_metric": best,
                **trainer_options,
            }
        trainer = Trainer(**trainer_options)
        start = time.perf_counter()
        try:
            scores = trainer.fit(model, loaders, resume_from=resume_from)
        except BaseException:
            if run_dir is not None and main and resume_from is None:
                release_unstarted(run_dir)  # a run that failed before its first step leaves the folder free
            raise
        seconds = (time.perf_counter() - start) / max(trainer.epoch, 1)
        result = RunResult(config, scores, trainer.history, seconds, model, run_dir)
        if run_dir is not None and main:
            write_run_folder(result)
    return result


def launched_by_torchrun() -> bool:
    """True in a process that torchrun started as one of several (WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def write_run_folder(result: RunResult) -> None:
    """`results.md`, `graph.png` and `curves.png` of a finished run."""
    run_dir = result.run_dir
    if run_dir is None:
        raise ValueError("write_run_folder needs a result with a run folder (run_dir is None)")
    from mtlkit.viz import draw_graph

    draw_graph(model_graph(result.model), run_dir / "graph.png")
    plot_curves(result.history, run_dir / "curves.png")
    weighting, _ = weighting_spec(result.config.weighting)
    model = result.config.model.architecture or "graph"
    text = (
        f"# {result.config.name}\n\n"
        f"dataset `{result.config.data.name or result.config.data.factory}`, model `{model}`, "
        f"weighting `{weighting}`, seed {result.config.seed}, "
        f"{result.seconds_per_epoch:.2f} s/epoch\n\n{scores_table(result.scores)}\n"
    )
    (run_dir / "results.md").write_text(text)


def evaluate(run_dir: str | Path, splits: tuple[str, ...] = ("train", "valid", "test")) -> dict[str, float]:
    """Rebuild a saved run from its `config.yaml`, load the weights it reported, score its splits.

    Those are `checkpoints/best.pt`, or `checkpoints/last.pt` for a run with `restore_best: false`.
    """
    run_dir = Path(run_dir)
    config = load_config(run_dir / "config.yaml")
    name = "best.pt" if config.trainer.get("restore_best", True) else "last.pt"
    path = run_dir / "checkpoints" / name
    if not path.is_file():
        raise ConfigError(f"{run_dir}: no checkpoints/{name} to evaluate")
    loaded = load_data(config)
    tasks = select_tasks(loaded.info, config.data)
    model = build_model(config, loaded.info, tasks)
    model.load_state_dict(load_checkpoint(path)["model"])
    loaders = [
        loader
        for loader in build_loaders(loaded, tasks, config.data.batch_size, config.seed)
        if loader.dataset.split in splits
    ]
    return metrics.score(model, loaders)
