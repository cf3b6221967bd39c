"""Progressive layered extraction: CGC stacked over the encoder's stages."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mtlkit.architectures.base import (
    Architecture,
    _dict_at,
    _expert_counts,
    _gate_input,
    _list_at,
    _mix,
    _Pass,
    _softmax_gate,
)


class PLE(Architecture):
    """Progressive Layered Extraction (PLE).

    [Tang et al., RecSys 2020](https://dl.acm.org/doi/10.1145/3383313.3412236). The
    encoder is a sequence of stages (see `mtlkit.architectures.base._as_stages`); each
    expert is a fresh copy of it, and extraction level l runs stage l of every expert.
    At each level, task t mixes the shared experts and its own experts with a softmax
    gate over its flattened level input; below the last level a shared gate mixes all
    experts into the shared path's next input. `num_experts=[shared, per task …]` as in
    LibMTL.

    `multi_input=True` is refused, as in LibMTL.

    Departures from LibMTL: any staged encoder (not only its ResNet), no `img_size`
    needed. The shared representation (`rep_grad`) is the cut
    above which every parameter serves one task: the last level's shared-expert outputs
    and each task's input to the last level (everything below the last level reaches
    every task through the shared gates).
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
        num_experts: Sequence[int],
        **kwargs: Any,
    ) -> None:
        super().__init__(task_name, encoder_class, decoders, rep_grad, multi_input, device, **kwargs)
        self._refuse_multi_input("the shared experts mix every task's path, so all tasks need the same input")
        n_shared, n_task = _expert_counts(num_experts, self.task_name, type(self).__name__)
        shared = [self._new_stages() for _ in range(n_shared)]
        own = {t: [self._new_stages() for _ in range(n_task[t])] for t in self.task_name}
        self.num_levels = len(shared[0])
        levels = range(self.num_levels)
        self.shared_experts = nn.ModuleList(nn.ModuleList(e[l] for e in shared) for l in levels)
        self.task_experts = nn.ModuleList(
            nn.ModuleDict({t: nn.ModuleList(e[l] for e in own[t]) for t in self.task_name}) for l in levels
        )
        self.task_gates = nn.ModuleList(
            nn.ModuleDict({t: _softmax_gate(n_shared + n_task[t]) for t in self.task_name}) for _ in levels
        )
        n_all = n_shared + sum(n_task.values())
        self.shared_gates = nn.ModuleList(_softmax_gate(n_all) for _ in range(self.num_levels - 1))
        self._finish_init()

    def _encode(self, inputs: Any, tasks: list[str]) -> _Pass:
        last = self.num_levels - 1
        h = {t: _gate_input(inputs, type(self).__name__) for t in self.task_name}  # each path's level input
        h_shared = inputs
        for level in range(last):  # every path: the shared gates read all experts
            shared = torch.stack([e(h_shared) for e in _list_at(self.shared_experts, level)])
            task_experts = _dict_at(self.task_experts, level)
            own = {t: [e(h[t]) for e in _list_at(task_experts, t)] for t in self.task_name}
            outputs = [x for task_outputs in own.values() for x in task_outputs]
            everyone = torch.cat([shared, torch.stack(outputs)]) if outputs else shared
            h_shared = _mix(everyone, self.shared_gates[level](h_shared))
            h = {t: self._gated(level, t, shared, own[t], h[t]) for t in self.task_name}
        shared = torch.stack([e(h_shared) for e in _list_at(self.shared_experts, last)])
        task_experts = _dict_at(self.task_experts, last)
        features = {t: self._gated(last, t, shared, [e(h[t]) for e in _list_at(task_experts, t)], h[t]) for t in tasks}
        reps = [shared] + ([h[t] for t in tasks] if last > 0 else [])
        return _Pass(features, reps)

    def _gated(self, level: int, task: str, shared: Tensor, own: list[Tensor], x: Tensor) -> Tensor:
        """Task `task`'s mixture, at `level`, of the shared experts' stack and its own experts' outputs."""
        experts = torch.cat([shared, torch.stack(own)]) if own else shared
        return _mix(experts, _dict_at(self.task_gates, level)[task](x))

    def shared_parameters(self) -> list[nn.Parameter]:
        last = self.num_levels - 1
        below = [self.shared_experts[:last], self.task_experts[:last], self.task_gates[:last], self.shared_gates]
        return [p for part in below for p in part.parameters()] + list(self.shared_experts[last].parameters())
