"""Result tables (Markdown) and training curves of experiment runs."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from mtlkit.errors import ConfigError


def scores_table(scores: Mapping[str, float]) -> str:
    """`task/dataset/split/metric` scores as a Markdown table, a row per task and metric, a column per split."""
    rows: dict[tuple[str, str, str], dict[str, float]] = {}
    splits: list[str] = []
    for key, value in scores.items():
        parts = key.split("/")
        if len(parts) != 4:
            continue
        task, dataset, split, metric = parts
        rows.setdefault((task, dataset, metric), {})[split] = value
        if split not in splits:
            splits.append(split)
    lines = [
        "| task | dataset | metric | " + " | ".join(splits) + " |",
        "|---|---|---|" + "---:|" * len(splits),
    ]
    for (task, dataset, metric), values in rows.items():
        cells = [f"{values[s]:.4f}" if s in values else "" for s in splits]
        lines.append(f"| {task} | {dataset} | {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def mean_std(values: Sequence[float], digits: int = 4) -> str:
    """`mean ± std` (sample std; just the mean for one value)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return _fixed(mean, digits)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return f"{_fixed(mean, digits)} ± {_fixed(std, digits)}"


def _fixed(value: float, digits: int) -> str:
    """`value` with `digits` decimals; a value that rounds to zero prints `0.00`, never `-0.00`."""
    return f"{round(value, digits) + 0.0:.{digits}f}"  # -0.0 + 0.0 is +0.0


def plot_curves(history: Sequence[Mapping[str, float]], path: str | Path) -> None:
    """Per-task training loss and validation metrics per epoch, side by side, saved to `path`."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ConfigError('curves.png needs matplotlib: pip install "mtlkit[plot]"') from err
    keys = sorted({k for record in history for k in record if k.count("/") == 3})
    losses = [k for k in keys if k.split("/")[2:] == ["train", "loss"] and not k.startswith("model/")]
    metrics = [k for k in keys if k.split("/")[2] != "train"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, group, title in ((axes[0], losses, "training loss"), (axes[1], metrics, "validation metrics")):
        for key in group:
            points = [(r["epoch"], r[key]) for r in history if key in r]
            ax.plot([e for e, _ in points], [v for _, v in points], marker=".", label=key)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        if group:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
