"""Customized gate control: shared and task-specific experts."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mtlkit.architectures.base import (
    Architecture,
    _expert_counts,
    _gate_input,
    _list_at,
    _mix,
    _Pass,
    _softmax_gate,
)


class CGC(Architecture):
    """Customized Gate Control (CGC), the one-level form of PLE.

    [Tang et al., RecSys 2020](https://dl.acm.org/doi/10.1145/3383313.3412236): task t
    reads a softmax-gated mixture of the shared experts and its own experts.
    `num_experts=[shared, per task …]` as in LibMTL; each expert is a fresh encoder.
    `img_size` is optional (the gates are sized by the first forward). The shared
    representation (`rep_grad`) is the stack of the shared experts' outputs; task
    experts, gates and heads get their own task's gradient.
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
        n_shared, n_task = _expert_counts(num_experts, self.task_name, type(self).__name__)
        self.shared_experts = nn.ModuleList(self._new_encoder() for _ in range(n_shared))
        self.task_experts = nn.ModuleDict(
            {t: nn.ModuleList(self._new_encoder() for _ in range(n_task[t])) for t in self.task_name}
        )
        self.gates = nn.ModuleDict({t: _softmax_gate(n_shared + n_task[t]) for t in self.task_name})
        self._finish_init()

    def expert_weights(self, inputs: Tensor, task_name: str) -> Tensor:
        """The gate of `task_name`: (batch, shared + own experts) weights, rows summing to one."""
        return self.gates[self._known_task(task_name)](_gate_input(inputs, type(self).__name__))

    def _encode(self, inputs: Any, tasks: list[str]) -> _Pass:
        shared = torch.stack([e(inputs) for e in self.shared_experts])
        features = {}
        for t in tasks:
            experts = torch.cat([shared, *(e(inputs).unsqueeze(0) for e in _list_at(self.task_experts, t))])
            features[t] = _mix(experts, self.expert_weights(inputs, t))
        return _Pass(features, [shared])

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.shared_experts.parameters())
