"""Multi-task attention network: per-task soft attention over a shared encoder's stages."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from mtlkit.architectures.base import Architecture, _LazyChannelLinear, _list_at, _Pass


class MTAN(Architecture):
    """Multi-Task Attention Network (MTAN).

    [Liu et al., CVPR 2019](https://arxiv.org/abs/1803.10704). One shared encoder, given
    as a sequence of stages (see `mtlkit.architectures.base._as_stages`). After stage k,
    task t computes a mask a = sigmoid(P₂ relu(P₁ [f_k, g])) from the shared features f_k
    and its previous attended features g (for k > 1), and keeps a ⊙ f_k. g is the task's
    attended features after stage k − 1, brought to f_k's shape by adaptive max pooling
    and a projection with ReLU. Every P is a 1×1 convolution (a linear map on vector
    features) sized by the first forward, so any staged encoder works: vectors
    (batch, D) or feature maps (batch, C, …).

    Departures from the paper and LibMTL: any staged encoder (not only ResNet); masks
    without batch norm and 1×1 projections where the paper uses 3×3 convolutions; the
    projection between stages belongs to each task (in the paper one block is shared by
    all tasks), so that everything but the encoder serves one task. The shared
    representation (`rep_grad`) is the encoder's output at every stage, as read by the
    attention modules.
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
        self.encoder = self._new_stages()
        n = len(self.encoder)
        self.attention = nn.ModuleDict({t: nn.ModuleList(_AttentionMask() for _ in range(n)) for t in self.task_name})
        self.projections = nn.ModuleDict(
            {t: nn.ModuleList(_LazyChannelLinear() for _ in range(n - 1)) for t in self.task_name}
        )
        self._finish_init()

    def _encode(self, inputs: Any, tasks: list[str]) -> _Pass:
        attended: dict[str, Tensor] = {}
        reps = []
        f = inputs
        for k, stage in enumerate(self.encoder):
            f = stage(f)
            if f.dim() < 2:
                raise ValueError(f"MTAN: stage {k} returned shape {tuple(f.shape)}; stages must give (batch, C, …)")
            shared = f.view_as(f)  # read only by the attention modules: the cut of this stage
            reps.append(shared)
            for t in tasks:
                x = shared
                if k > 0:
                    previous = _match_spatial(attended[t], shared)
                    x = torch.cat(
                        [shared, F.relu(_list_at(self.projections, t)[k - 1](previous, shared.shape[1]))], dim=1
                    )
                attended[t] = _list_at(self.attention, t)[k](x, shared.shape[1]) * shared
        return _Pass(attended, reps)

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.encoder.parameters())


class _AttentionMask(nn.Module):
    """sigmoid(P₂ relu(P₁ x)), both projections to `channels` outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = _LazyChannelLinear()
        self.outer = _LazyChannelLinear()

    def forward(self, x: Tensor, channels: int) -> Tensor:
        return torch.sigmoid(self.outer(F.relu(self.inner(x, channels)), channels))


def _match_spatial(x: Tensor, like: Tensor) -> Tensor:
    """`x` (batch, C, …) max-pooled to the spatial shape of `like` (global pooling when `like` has none)."""
    if x.shape[2:] == like.shape[2:]:
        return x
    if like.dim() == 2:
        return x.flatten(2).amax(dim=-1)
    pools = {3: F.adaptive_max_pool1d, 4: F.adaptive_max_pool2d, 5: F.adaptive_max_pool3d}
    if x.dim() != like.dim() or x.dim() not in pools:
        raise ValueError(
            f"MTAN cannot bring features of shape {tuple(x.shape)} to the shape {tuple(like.shape)} of the next stage"
        )
    return pools[x.dim()](x, like.shape[2:])
