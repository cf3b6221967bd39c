"""torchMTL's README quickstart, run with mtlkit.

The task list, the model construction and the training loop are torchMTL's
(github.com/chrisby/torchMTL, README "Quickstart" and "The training loop"); only
the imports change. The README leaves `data_loader` and `optimizer` to the
reader: here they are a small synthetic data set and Adam.

Run: python examples/torchmtl_quickstart.py
"""

from __future__ import annotations

import torch
from torch.nn import BCEWithLogitsLoss, Linear, MSELoss, Sequential
from torch.utils.data import DataLoader

from mtlkit import MTLModel  # torchMTL: from torchmtl import MTLModel
from mtlkit.data.synthetic import QuickstartDataset
from mtlkit.layers import Concat  # torchMTL: from torchmtl.wrapping_layers import Concat


def build_model() -> MTLModel:
    """The quickstart graph: two embeddings, their concatenation, three task heads."""
    tasks = [
        {
            "name": "Embed1",
            "layers": Sequential(*[Linear(16, 32), Linear(32, 8)]),
            # No anchor_layer means this layer receives input directly
        },
        {
            "name": "Embed2",
            "layers": Sequential(*[Linear(16, 32), Linear(32, 8)]),
            # No anchor_layer means this layer receives input directly
        },
        {"name": "CatTask", "layers": Concat(dim=1), "loss_weight": 1.0, "anchor_layer": ["Embed1", "Embed2"]},
        {
            "name": "Task1",
            "layers": Sequential(*[Linear(8, 32), Linear(32, 1)]),
            "loss": MSELoss(),
            "loss_weight": 1.0,
            "anchor_layer": "Embed1",
        },
        {
            "name": "Task2",
            "layers": Sequential(*[Linear(8, 64), Linear(64, 1)]),
            "loss": BCEWithLogitsLoss(),
            "loss_weight": 1.0,
            "anchor_layer": "Embed2",
        },
        {"name": "FNN", "layers": Sequential(*[Linear(16, 32), Linear(32, 32)]), "anchor_layer": "CatTask"},
        {
            "name": "Task3",
            "layers": Sequential(*[Linear(32, 16), Linear(16, 1)]),
            "anchor_layer": "FNN",
            "loss": MSELoss(),
            "loss_weight": "auto",
            "loss_init_val": 1.0,
        },
    ]
    model = MTLModel(tasks, output_tasks=["Task1", "Task2", "Task3"])
    return model


@torch.no_grad()
def task_losses(model: MTLModel, data: QuickstartDataset) -> list[float]:
    """Each output task's unweighted loss on the whole data set."""
    y_hat, l_funcs, _ = model(data.X)
    return [l_funcs[i](y_hat[i], y).item() for i, y in enumerate(data.targets)]


def main(epochs: int = 20, batch_size: int = 32, lr: float = 1e-3, seed: int = 0) -> dict[str, tuple[float, float]]:
    """Train the quickstart graph; print and return each task's loss (before, after)."""
    torch.manual_seed(seed)
    model = build_model()
    data = QuickstartDataset(n=1024, seed=seed)
    data_loader = DataLoader(data, batch_size=batch_size, shuffle=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    before = task_losses(model, data)

    for _ in range(epochs):
        for X, y in data_loader:
            optimizer.zero_grad()

            # Our model will return a list of predictions (from the layers specified in `output_tasks`),
            # loss functions, and regularization parameters (as defined in the tasks variable)
            y_hat, l_funcs, l_weights = model(X)

            loss = 0
            # We can now iterate over the tasks and accumulate the losses
            for i in range(len(y_hat)):
                loss += l_weights[i] * l_funcs[i](y_hat[i], y[i])

            loss.backward()
            optimizer.step()

    after = task_losses(model, data)
    print(f"{'task':<8}{'loss before':>14}{'loss after':>14}")
    for name, b, a in zip(model.output_tasks, before, after):
        print(f"{name:<8}{b:>14.4f}{a:>14.4f}")
    print(f"Task3 'auto' weight: {model.Task3_loss.item():.4f} (initialised at 1.0)")
    return {name: (b, a) for name, b, a in zip(model.output_tasks, before, after)}


if __name__ == "__main__":
    main()
