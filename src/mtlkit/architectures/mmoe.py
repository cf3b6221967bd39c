"""Multi-gate mixture-of-experts."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mtlkit.architectures.base import Architecture, _gate_input, _mix, _Pass, _softmax_gate
from mtlkit.errors import SpecError


class MMoE(Architecture):
    """Multi-gate Mixture-of-Experts (MMoE).

    [Ma et al., KDD 2018](https://dl.acm.org/doi/10.1145/3219819.3220007): task t reads
    f_t(x) = Σ_i g_t(x)_i e_i(x), with `num_experts` experts e_i (each a fresh encoder)
    and a softmax gate g_t(x) = softmax(W_t · flatten(x)) per task. `num_experts` is an
    int or LibMTL's one-element list. `shared_gate=True` gives every task the same gate:
    the paper's one-gate baseline (OMoE).

    Departures from LibMTL: `img_size` is optional (the gates are sized by the first
    forward), and the shared representation (`rep_grad`) is the stack of expert outputs,
    which every task reads, rather than each task's own mixture: the task gradients
    then live in one space, so gradient balancers compare them; gates and heads, above
    it, get their own task's gradient. With `shared_gate` it is the common mixture.
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
        num_experts: int | Sequence[int],
        shared_gate: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(task_name, encoder_class, decoders, rep_grad, multi_input, device, **kwargs)
        n = _single_count(num_experts, type(self).__name__)
        self.num_experts = n
        self.shared_gate = shared_gate
        self.experts = nn.ModuleList(self._new_encoder() for _ in range(n))
        gates = ["all"] if shared_gate else self.task_name
        self.gates = nn.ModuleDict({name: _softmax_gate(n) for name in gates})
        self._finish_init()

    def expert_weights(self, inputs: Tensor, task_name: str) -> Tensor:
        """The gate of `task_name`: (batch, num_experts) weights, each row summing to one."""
        gate = self.gates["all"] if self.shared_gate else self.gates[self._known_task(task_name)]
        return gate(_gate_input(inputs, type(self).__name__))

    def _encode(self, inputs: Any, tasks: list[str]) -> _Pass:
        experts = torch.stack([e(inputs) for e in self.experts])
        if self.shared_gate:
            mixture = _mix(experts, self.expert_weights(inputs, tasks[0]))
            return _Pass({t: mixture for t in tasks}, [mixture])
        return _Pass({t: _mix(experts, self.expert_weights(inputs, t)) for t in tasks}, [experts])

    def shared_parameters(self) -> list[nn.Parameter]:
        shared = list(self.experts.parameters())
        if self.shared_gate:
            shared += list(self.gates.parameters())
        return shared


def _single_count(num_experts: int | Sequence[int], arch: str) -> int:
    """An expert count given as an int or as LibMTL's one-element list."""
    if isinstance(num_experts, (list, tuple)) and len(num_experts) == 1:
        num_experts = num_experts[0]
    if not isinstance(num_experts, int) or isinstance(num_experts, bool) or num_experts < 1:
        raise SpecError(f"{arch}: num_experts must be a positive int (or [int]), got {num_experts!r}")
    return num_experts
