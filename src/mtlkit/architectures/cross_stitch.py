"""Cross-stitch networks: one column per task, mixed linearly after each stage."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mtlkit.architectures.base import Architecture, _list_at, _Pass


class CrossStitch(Architecture):
    """Cross-stitch networks.

    [Misra et al., CVPR 2016](https://arxiv.org/abs/1604.03539). Every task has its own
    copy (column) of the staged encoder (see `mtlkit.architectures.base._as_stages`);
    after each stage but the last, a cross-stitch unit α (T×T) feeds column t with
    Σ_j α[t, j] · x_j. The units start as the paper's convex combination: α[t, t] =
    `alpha_same` (α_S, 0.9 by default) and α[t, j] = (1 − α_S)/(T − 1), which is the
    paper's (α_S, α_D) = (0.9, 0.1) for two tasks. The paper trains the units with a
    larger learning rate than the columns: `model.units.parameters()` can go in their
    own optimizer group. `multi_input=True` is refused, as in LibMTL.

    Departures from LibMTL: any staged encoder (not only its ResNet), units initialised
    as in the paper rather than all ones, one unit after every stage but the last. The
    shared parameters are the columns below the last stage and the units before the
    last one; the shared representation (`rep_grad`) is the stack of column outputs
    entering the last unit, whose row t, like column t's last stage, serves task t only.
    """

    def __init__(
        self,
        task_name: Sequence[str],
        encoder_class: Callable[[], Any],
        decoders: Mapping[str, nn.Module],
        rep_grad: bool = False,
        multi_input: bool = False,
        device: torch.device | str | None = None,
        *,
        alpha_same: float = 0.9,
        **kwargs: Any,
    ) -> None:
        super().__init__(task_name, encoder_class, decoders, rep_grad, multi_input, device, **kwargs)
        self._refuse_multi_input("every task column reads the other columns, so all tasks need the same input")
        self.columns = self._new_task_columns()
        self.num_stages = len(_list_at(self.columns, self.task_name[0]))
        T = self.task_num
        eye = torch.eye(T)
        init = alpha_same * eye + (1 - alpha_same) / (T - 1) * (1 - eye)
        self.units = nn.ParameterList(nn.Parameter(init.clone()) for _ in range(self.num_stages - 1))
        self._finish_init()

    def _encode(self, inputs: Any, tasks: list[str]) -> _Pass:
        return _run_columns(self.columns, self.task_name, inputs, tasks, lambda i: self.units[i])

    def shared_parameters(self) -> list[nn.Parameter]:
        last = self.num_stages - 1
        columns = [p for t in self.task_name for p in _list_at(self.columns, t)[:last].parameters()]
        return columns + list(self.units[: last - 1])


Cross_stitch = CrossStitch


def _run_columns(
    columns: nn.ModuleDict, task_names: list[str], inputs: Any, tasks: list[str], mixing: Callable[[int], Tensor]
) -> _Pass:
    """Run one column per task, feeding column t's stage s+1 with Σ_j M[t, j] · (column j after stage s).

    `mixing(s)` gives the T×T matrix M after stage s. The cut is the stack of column
    outputs entering the last mixing; only the requested tasks run their last stage.
    """
    last = len(_list_at(columns, task_names[0])) - 1
    x = [_list_at(columns, t)[0](inputs) for t in task_names]
    for stage in range(1, last):
        mixed = torch.einsum("tj,j...->t...", mixing(stage - 1), torch.stack(x))
        x = [_list_at(columns, t)[stage](mixed[i]) for i, t in enumerate(task_names)]
    stacked = torch.stack(x)
    M = mixing(last - 1)
    features = {}
    for t in tasks:
        features[t] = _list_at(columns, t)[last](torch.einsum("j,j...->...", M[task_names.index(t)], stacked))
    return _Pass(features, [stacked])
