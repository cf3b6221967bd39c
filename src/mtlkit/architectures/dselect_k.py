"""DSelect-k: mixture of experts with differentiable, exactly k-sparse gates."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mtlkit.architectures.base import Architecture, _gate_input, _mix, _Pass
from mtlkit.architectures.mmoe import _single_count
from mtlkit.errors import SpecError


class DSelectK(Architecture):
    """DSelect-k gates over shared experts.

    [Hazimeh et al., NeurIPS 2021](https://openreview.net/forum?id=tKlYQJLYN8v). Each
    task's gate combines `num_nonzeros` (k) single-expert selectors with softmax weights.
    A selector holds m = ⌈log2 n⌉ logits z; S(z) is the smooth step with width `kgamma`
    (0 below −γ/2, 1 above γ/2, cubic between), and the selector's weight on expert j is
    Π_l S(z_l) or 1 − S(z_l) by bit l of j. Once every |z_l| ≥ γ/2 the selectors are
    one-hot and the gate has at most k non-zero weights (exactly k when the selectors
    pick different experts). Gates are per example (logits linear in the flattened
    input), initialised as in the official code: z uniform in ±γ/100, the selector
    weights in ±0.05.

    `training_step` adds to each task's loss the selector regularisers, averaged over
    the batch: when n is not a power of two, Σ_i (1 / Σ_j r_ij − 1), which keeps
    selectors off the codes of missing experts (LibMTL sums instead and keeps the
    constant); with `entropy_reg=λ`, λ Σ_i entropy(r_i), which speeds up binarisation
    (off by default, as in the official gate). `forward` leaves them out. The shared
    representation (`rep_grad`) is the stack of expert outputs, as in `MMoE`.
    """

    codes: Tensor

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
        num_nonzeros: int,
        kgamma: float = 1.0,
        entropy_reg: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(task_name, encoder_class, decoders, rep_grad, multi_input, device, **kwargs)
        n = _single_count(num_experts, type(self).__name__)
        if not isinstance(num_nonzeros, int) or not 1 <= num_nonzeros <= n:
            raise SpecError(f"DSelectK: num_nonzeros must be an int in [1, num_experts={n}], got {num_nonzeros!r}")
        if kgamma <= 0:
            raise SpecError(f"DSelectK: kgamma must be positive, got {kgamma}")
        self.num_experts = n
        self.num_nonzeros = num_nonzeros
        self.kgamma = float(kgamma)
        self.entropy_reg = entropy_reg
        self.num_bits = max(1, math.ceil(math.log2(n)))
        # codes[j, l]: bit l (most significant first) of expert j's index
        codes = [[(j >> (self.num_bits - 1 - l)) & 1 for l in range(self.num_bits)] for j in range(n)]
        self.register_buffer("codes", torch.tensor(codes, dtype=torch.bool), persistent=False)
        self.experts = nn.ModuleList(self._new_encoder() for _ in range(n))
        k, m = num_nonzeros, self.num_bits
        self.z_logits = nn.ModuleDict({t: _UniformLazyLinear(k * m, kgamma / 100) for t in self.task_name})
        self.w_logits = nn.ModuleDict({t: _UniformLazyLinear(k, 0.05) for t in self.task_name})
        self._finish_init()

    def expert_weights(self, inputs: Tensor, task_name: str) -> Tensor:
        """The gate of `task_name`: (batch, num_experts) weights, at most k non-zero once binarised."""
        return self._gate(inputs, self._known_task(task_name))[0]

    def selector_outputs(self, inputs: Tensor, task_name: str) -> Tensor:
        """(batch, k, num_experts): each selector's weights, one-hot once binarised."""
        return self._gate(inputs, self._known_task(task_name))[1]

    def _gate(self, inputs: Any, task: str) -> tuple[Tensor, Tensor]:
        x = _gate_input(inputs, type(self).__name__).flatten(1)
        z = self.z_logits[task](x).view(-1, self.num_nonzeros, 1, self.num_bits)
        s = _smooth_step(z, self.kgamma)
        selectors = torch.where(self.codes, s, 1 - s).prod(dim=-1)  # (batch, k, n)
        alpha = torch.softmax(self.w_logits[task](x), dim=-1)  # (batch, k)
        return torch.einsum("bk,bkn->bn", alpha, selectors), selectors

    def _penalty(self, selectors: Tensor) -> Tensor | None:
        terms = []
        if self.num_experts != 2**self.num_bits:
            terms.append((1 / selectors.sum(-1) - 1).sum(-1).mean())
        if self.entropy_reg:
            entropy = -(selectors * torch.log(selectors + 1e-6)).sum(-1)
            terms.append(self.entropy_reg * entropy.sum(-1).mean())
        return sum(terms[1:], terms[0]) if terms else None

    def _encode(self, inputs: Any, tasks: list[str]) -> _Pass:
        experts = torch.stack([e(inputs) for e in self.experts])
        features, penalties = {}, {}
        for t in tasks:
            weights, selectors = self._gate(inputs, t)
            features[t] = _mix(experts, weights)
            penalty = self._penalty(selectors)
            if penalty is not None:
                penalties[t] = penalty
        return _Pass(features, [experts], penalties)

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.experts.parameters())


def _smooth_step(t: Tensor, gamma: float) -> Tensor:
    """0 for t ≤ −γ/2, 1 for t ≥ γ/2, and −2t³/γ³ + 3t/(2γ) + 1/2 between (C¹ at both ends)."""
    cubic = -2 / gamma**3 * t**3 + 3 / (2 * gamma) * t + 0.5
    return torch.where(t <= -gamma / 2, torch.zeros_like(t), torch.where(t >= gamma / 2, torch.ones_like(t), cubic))


class _UniformLazyLinear(nn.LazyLinear):
    """`nn.LazyLinear` whose weight and bias start uniform in ±`bound`."""

    def __init__(self, out_features: int, bound: float) -> None:
        super().__init__(out_features)
        self.bound = bound

    def reset_parameters(self) -> None:
        if not self.has_uninitialized_params() and self.in_features != 0:
            nn.init.uniform_(self.weight, -self.bound, self.bound)
            nn.init.uniform_(self.bias, -self.bound, self.bound)
