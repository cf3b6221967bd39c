"""Snorkel's multi-task tutorial ("MTL Basics"), ported to mtlkit by changing the imports.

Two tasks on 2-D points in [-1, 1]²: is the point inside the unit circle, is it inside
the unit square. They share a small MLP trunk (`base_mlp`) and each has a linear head.
Then a third task, the circle with flipped labels, joins the same trunk.

    python examples/snorkel_tutorial.py

The upstream tutorial: https://github.com/snorkel-team/snorkel-tutorials (multitask/).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlkit import DictDataLoader, DictDataset, MultitaskClassifier, Operation, Scorer, Task, Trainer
from mtlkit.data.tutorial import make_circle_dataset, make_inv_circle_dataset, make_square_dataset

SEED = 123
N = 1000  # data points per dataset
R = 1  # unit distance


def make_dataloaders(name: str, splits: Sequence[tuple[Tensor, Tensor]], batch_size: int = 32) -> list[DictDataLoader]:
    """One loader per split; X field `<name>_data`, labels for task `<name>_task`."""
    loaders = []
    for split, (X, Y) in zip(("train", "valid", "test"), splits):
        dataset = DictDataset(f"{name}Dataset", split, {f"{name}_data": X}, {f"{name}_task": Y})
        loaders.append(DictDataLoader(dataset, batch_size=batch_size))
    return loaders


def main(seed: int = SEED, verbose: bool = True) -> tuple[MultitaskClassifier, dict[str, float], dict[str, float]]:
    """Run the tutorial; return the final model and the scores of the two- and three-task models."""
    torch.manual_seed(seed)

    # --- data: one dataset per task, split 80/10/10 -----------------------------------
    dataloaders = make_dataloaders("circle", make_circle_dataset(N, R)) + make_dataloaders(
        "square", make_square_dataset(N, R)
    )

    # --- the circle task, written out in full ------------------------------------------
    base_mlp = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 4), nn.ReLU())
    head_module = nn.Linear(4, 2)
    module_pool = nn.ModuleDict({"base_mlp": base_mlp, "circle_head_module": head_module})
    op1 = Operation(name="base_mlp", module_name="base_mlp", inputs=[("_input_", "circle_data")])
    op2 = Operation(name="circle_head", module_name="circle_head_module", inputs=["base_mlp"])
    circle_task = Task(
        name="circle_task",
        module_pool=module_pool,
        op_sequence=[op1, op2],
        loss_func=F.cross_entropy,
        output_func=partial(F.softmax, dim=1),
        scorer=Scorer(metrics=["accuracy"]),
    )

    # --- the square task, with the defaults (cross-entropy, softmax, accuracy) ---------
    square_task = Task(
        name="square_task",
        module_pool=nn.ModuleDict({"base_mlp": base_mlp, "square_head": nn.Linear(4, 2)}),
        op_sequence=[
            Operation("base_mlp", [("_input_", "square_data")]),
            Operation("square_head", ["base_mlp"]),
        ],
    )

    # --- model, training, scores -------------------------------------------------------
    model = MultitaskClassifier([circle_task, square_task])
    trainer = Trainer(n_epochs=10, lr=0.02, progress_bar=False)
    trainer.fit(model, dataloaders)
    two_task_scores = model.score(dataloaders)
    if verbose:
        _print_scores("circle + square", two_task_scores)

    # --- "your turn": the inverse circle task shares base_mlp ---------------------------
    all_dataloaders = dataloaders + make_dataloaders("inv_circle", make_inv_circle_dataset(N, R))
    inv_circle_task = Task(
        name="inv_circle_task",
        module_pool=nn.ModuleDict({"base_mlp": base_mlp, "inv_circle_head": nn.Linear(4, 2)}),
        op_sequence=[
            Operation("base_mlp", [("_input_", "inv_circle_data")]),
            Operation("inv_circle_head", ["base_mlp"]),
        ],
    )
    model = MultitaskClassifier([circle_task, square_task, inv_circle_task])
    trainer.fit(model, all_dataloaders)
    three_task_scores = model.score(all_dataloaders)
    if verbose:
        _print_scores("circle + square + inv_circle", three_task_scores)

    assert len(model.tasks) == 3
    assert len(model.module_pool) == 4  # 1 shared module plus 3 separate task heads
    return model, two_task_scores, three_task_scores


def _print_scores(title: str, scores: dict[str, float]) -> None:
    print(title)
    for key, value in scores.items():
        print(f"  {key:50s} {value:.3f}")


if __name__ == "__main__":
    main()
