"""Geometric loss strategy (Chennupati et al., CVPR-W 2019)."""

from __future__ import annotations

import torch
from torch import Tensor

from mtlkit.weighting.base import LossBalancer
from mtlkit.weighting.registry import register


@register("gls", "geometric")
class GLS(LossBalancer):
    """Geometric loss strategy: backpropagate the geometric mean (Π_t L_t)^{1/T}.

    `MultiNet++: Multi-Stream Feature Aggregation and Geometric Loss Strategy for
    Multi-Task Learning <https://arxiv.org/abs/1904.08492>`_ (Chennupati et al.,
    CVPR Workshops 2019). The effective weight of task t is GM / (T L_t). T counts the
    tasks present in the batch. Every loss must be positive (the geometric mean of a
    zero loss has no useful gradient); a non-positive loss raises ValueError naming
    the task. Stateless; `tasks` is optional.
    """

    def combine(self, losses: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
        positive = (losses.detach() > 0).tolist()
        if not all(positive):
            bad = [self.task_names[i] if self.task_names else i for i, ok in zip(index.tolist(), positive) if not ok]
            raise ValueError(f"GLS needs positive losses; the loss of task(s) {bad} is <= 0")
        objective = torch.exp(torch.log(losses).mean())
        return objective, (objective / (losses.numel() * losses)).detach()
