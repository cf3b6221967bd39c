"""Random loss weighting (Lin et al., TMLR 2022)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from mtlkit.weighting.base import LossBalancer
from mtlkit.weighting.registry import register


@register("rlw", "random")
class RLW(LossBalancer):
    """Random loss weighting: w = softmax(z), z ~ N(0, I), drawn anew every step.

    `Reasonable Effectiveness of Random Weighting: A Litmus Test for Multi-Task
    Learning <https://arxiv.org/abs/2111.10603>`_ (Lin et al., TMLR 2022), with the
    normal distribution + softmax that the paper and LibMTL use by default (TorchJD's
    `Random` is the same weighting, hence also registered as "random"). The softmax
    runs over the tasks present in the batch, so their weights sum to 1.

    `seed` None (default) draws from torch's global generator on the losses' device
    (seed it for reproducible runs); an int draws from a CPU generator of its own seeded
    with it, whose state is in `state_dict()`. `tasks` is optional.
    """

    def __init__(self, tasks: int | Sequence[str] | None = None, seed: int | None = None) -> None:
        super().__init__(tasks)
        self.generator = None if seed is None else torch.Generator().manual_seed(seed)

    def combine(self, losses: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
        if self.generator is None:
            z = torch.randn(losses.shape, dtype=losses.dtype, device=losses.device)
        else:
            z = torch.randn(losses.shape, generator=self.generator, dtype=torch.float64).to(losses.device, losses.dtype)
        w = torch.softmax(z, dim=0)
        return (w * losses).sum(), w

    def get_extra_state(self) -> Any:
        return {"generator": None if self.generator is None else self.generator.get_state()}

    def set_extra_state(self, state: Any) -> None:
        if (state["generator"] is None) != (self.generator is None):
            raise ValueError("RLW: the checkpoint was saved with a different `seed` setting (None vs an int)")
        if self.generator is not None:
            self.generator.set_state(state["generator"])
