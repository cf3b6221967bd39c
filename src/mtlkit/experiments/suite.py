"""The benchmark suite and the demo: many runs of one dataset, summarised as MTL papers do.

For each variant (an architecture with a balancer) and seed, a run trains for a fixed
number of epochs and is scored on the test split with the model of its last epoch
(`restore_best: false`, with or without run folders).
Single-task baselines (one HPS network per task, same encoder and budget) give Δm, the
average relative gain over them (`mtlkit.metrics.delta_m`). Tables show each task's
metric as mean ± std over seeds, Δm in percent and the wall time per epoch.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tqdm import tqdm

from mtlkit.data.datasets import DatasetInfo
from mtlkit.experiments.build import load_data
from mtlkit.experiments.config import DataConfig, ExperimentConfig, ModelConfig
from mtlkit.experiments.report import mean_std
from mtlkit.experiments.run_folder import check_free
from mtlkit.experiments.runner import RunResult, run
from mtlkit.metrics import delta_m

# Small settings per dataset: minutes on two CPU cores (`scale` multiplies the epochs).
PRESETS: dict[str, dict[str, Any]] = {
    "digits": {"batch_size": 64, "encoder": {"hidden": [128, 64]}, "trainer": {"n_epochs": 15, "lr": 2e-3}},
    "penguins": {"batch_size": 32, "encoder": {"hidden": [32, 32]}, "trainer": {"n_epochs": 40, "lr": 3e-3}},
    "multi_mnist": {"batch_size": 128, "encoder": {"channels": [16, 32]}, "trainer": {"n_epochs": 6, "lr": 2e-3}},
    "qm9": {
        "batch_size": 128,
        "options": {"max_molecules": 6000},
        "encoder": {"hidden": [256, 128]},
        "trainer": {"n_epochs": 15, "lr": 1e-3},
    },
    "correlated_regression": {"batch_size": 128, "encoder": {"hidden": [32]}, "trainer": {"n_epochs": 20, "lr": 1e-3}},
    "circles_squares": {"batch_size": 32, "encoder": {"hidden": [8, 4]}, "trainer": {"n_epochs": 10, "lr": 2e-2}},
}
DEFAULT_BALANCERS = (
    "ew",
    "uw",
    "dwa",
    "rlw",
    "gls",
    "famo",
    "mgda",
    "pcgrad",
    "cagrad",
    "imtl_h",
    "nash_mtl",
    "upgrad",
)
DEFAULT_ARCHITECTURES = ("hps", "cross_stitch", "mmoe", "mtan", "cgc", "ple", "dselect_k", "ltb")


@dataclass(frozen=True)
class Variant:
    """One row of a table: an architecture trained with a balancer."""

    label: str
    architecture: str = "hps"
    weighting: Any = "ew"
    options: dict[str, Any] = field(default_factory=dict)
    rep_grad: bool = False


@dataclass
class SuiteResult:
    """Per-variant runs (one per seed) and the single-task baselines, with the dataset's task info."""

    dataset: str
    info: DatasetInfo
    runs: dict[str, list[RunResult]]
    baselines: list[dict[str, dict[str, float]]]

    def table(self) -> str:
        """Markdown: a row per variant; each task's test metric, Δm (%) and s/epoch as mean ± std over seeds."""
        tasks = list(self.info.tasks)
        header = ["method"] + [
            f"{t} {self.info.tasks[t].metric} {'↑' if self.info.tasks[t].higher_is_better else '↓'}" for t in tasks
        ]
        header += ["Δm % ↑", "s/epoch"]
        lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
        if self.baselines:
            cells = [mean_std([b[t][self.info.tasks[t].metric] for b in self.baselines]) for t in tasks]
            lines.append("| single-task | " + " | ".join(cells) + " | 0 | |")
        for label, results in self.runs.items():
            per_seed = [split_metrics(r, self.info) for r in results]
            cells = [mean_std([m[t][self.info.tasks[t].metric] for m in per_seed]) for t in tasks]
            if self.baselines:
                directions = {t: {self.info.tasks[t].metric: self.info.tasks[t].higher_is_better} for t in tasks}
                deltas = [delta_m(m, b, directions) for m, b in zip(per_seed, self.baselines)]
                cells.append(mean_std(deltas, digits=2))
            else:
                cells.append("")
            cells.append(mean_std([r.seconds_per_epoch for r in results], digits=2))
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def legend(self) -> str:
        """What the table shows: the split, the seeds, what Δm means and its sign."""
        seeds = len(next(iter(self.runs.values()), [])) or len(self.baselines)
        if seeds == 1:
            spread = (
                "One seed: no ± is shown, and a difference of a few points between rows is within "
                "seed-to-seed noise, not a win; `mtlkit bench` gives mean ± std over seeds."
            )
        else:
            spread = f"Mean ± sample std over {seeds} seeds; a difference smaller than the ± is not a win."
        return (
            "Each task's metric on the test split, from the model of the last epoch. "
            f"{spread} Δm %: the average over tasks of the relative difference to the single-task "
            "baseline (sign flipped for metrics where lower is better), in percent: above 0 beats the "
            "single-task networks, below 0 loses to them."
        )


def split_metrics(result: RunResult, info: DatasetInfo, split: str = "test") -> dict[str, dict[str, float]]:
    """`{task: {metric: value}}` of a run on `split`."""
    values: dict[str, dict[str, float]] = {}
    for key, value in result.scores.items():
        task, _dataset, key_split, metric = key.split("/")
        if key_split == split and task in info.tasks:
            values.setdefault(task, {})[metric] = value
    return values


def base_config(dataset: str, seed: int = 0, scale: float = 1.0) -> ExperimentConfig:
    """The dataset's preset as an `ExperimentConfig` (HPS, EW, last-epoch model); `scale` multiplies the epochs."""
    preset = PRESETS[dataset]
    trainer = {**preset["trainer"], "restore_best": False}
    trainer["n_epochs"] = max(1, round(trainer["n_epochs"] * scale))
    return ExperimentConfig(
        name=dataset,
        seed=seed,
        data=DataConfig(name=dataset, batch_size=preset["batch_size"], options=preset.get("options", {})),
        model=ModelConfig(architecture="hps", encoder=preset["encoder"]),
        trainer=trainer,
    )


def run_suite(
    dataset: str,
    variants: Sequence[Variant],
    seeds: Iterable[int] = (0, 1, 2),
    scale: float = 1.0,
    baselines: bool = True,
    out_dir: Path | None = None,
) -> SuiteResult:
    """Train every variant (and the single-task baselines) on every seed; one progress bar over all runs.

    With `out_dir`, each variant's run on each seed writes its run folder (config, logs,
    checkpoints, graph.png, curves.png, results.md) to `out_dir/<variant>-seed<seed>`.
    """
    seeds = list(seeds)
    if out_dir is not None:  # refuse before hours of training, not at the first variant's folder
        for seed in seeds:
            for variant in variants:
                check_free(out_dir / f"{_slug(variant.label)}-seed{seed}")
    # The splits depend on the seed only: one load serves every run of a seed.
    loads = {seed: load_data(base_config(dataset, seed, scale)) for seed in seeds}
    info = loads[seeds[0]].info
    tasks = list(info.tasks)
    jobs = len(seeds) * (len(variants) + (len(tasks) if baselines else 0))
    bar = tqdm(total=jobs, desc=f"{dataset}", unit="run")
    runs: dict[str, list[RunResult]] = {v.label: [] for v in variants}
    baseline_scores: list[dict[str, dict[str, float]]] = []
    for seed in seeds:
        config = base_config(dataset, seed, scale)
        loaded = loads[seed]
        if baselines:
            scores: dict[str, dict[str, float]] = {}
            for task in tasks:
                bar.set_postfix_str(f"single-task {task}, seed {seed}")
                single = replace(config, data=replace(config.data, tasks=(task,)))
                scores.update(split_metrics(run(single, progress_bar=False, loaded=loaded), info))
                bar.update()
            baseline_scores.append(scores)
        for variant in variants:
            bar.set_postfix_str(f"{variant.label}, seed {seed}")
            model = replace(
                config.model, architecture=variant.architecture, options=variant.options, rep_grad=variant.rep_grad
            )
            variant_config = replace(
                config, name=f"{dataset}-{variant.label}", model=model, weighting=variant.weighting
            )
            run_dir = out_dir / f"{_slug(variant.label)}-seed{seed}" if out_dir is not None else None
            runs[variant.label].append(run(variant_config, run_dir, progress_bar=False, loaded=loaded))
            bar.update()
    bar.close()
    return SuiteResult(dataset, info, runs, baseline_scores)


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", label).strip("-")


def balancer_variants(names: Sequence[str] = DEFAULT_BALANCERS, architecture: str = "hps") -> list[Variant]:
    """One variant per balancer on one architecture (gradient methods on the shared parameters)."""
    return [Variant(label=name, architecture=architecture, weighting=name) for name in names]


def architecture_variants(names: Sequence[str] = DEFAULT_ARCHITECTURES, weighting: str = "ew") -> list[Variant]:
    """One variant per architecture with one balancer."""
    return [Variant(label=name, architecture=name, weighting=weighting) for name in names]


def demo_variants() -> list[Variant]:
    """The demo's grid: two architectures × three balancers (a loss method and two gradient methods)."""
    return [
        Variant(label=f"{arch} + {weighting}", architecture=arch, weighting=weighting)
        for arch in ("hps", "mmoe")
        for weighting in ("ew", "uw", "pcgrad", "imtl_h")
    ]
