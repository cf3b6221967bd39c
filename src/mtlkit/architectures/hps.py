"""Hard parameter sharing."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from mtlkit.architectures.base import Architecture, _Pass


class HPS(Architecture):
    """Hard parameter sharing: one encoder, one head per task.

    [Caruana, ICML 1993](https://dl.acm.org/doi/10.5555/3091529.3091535). As in
    LibMTL, an encoder that returns a list gives the t-th element to the t-th task.
    The shared representation (`rep_grad`) is the encoder's output.
    """

    def __init__(
        self,
        task_name: Sequence[str],
        encoder_class: Callable[[], Any],
        decoders: Mapping[str, nn.Module],
        rep_grad: bool = False,
        multi_input: bool = False,
        device: torch.device | str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(task_name, encoder_class, decoders, rep_grad, multi_input, device, **kwargs)
        self.encoder = self._new_encoder()
        self._finish_init()

    def _encode(self, inputs: Any, tasks: list[str]) -> _Pass:
        rep = self.encoder(inputs)
        if isinstance(rep, list):
            if len(rep) != self.task_num:
                raise ValueError(f"HPS: the encoder returned a list of {len(rep)} tensors for {self.task_num} tasks")
            per_task = dict(zip(self.task_name, rep))
            return _Pass({t: per_task[t] for t in tasks}, [per_task[t] for t in tasks])
        return _Pass({t: rep for t in tasks}, [rep])

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.encoder.parameters())
