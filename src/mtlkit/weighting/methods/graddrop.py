"""Gradient sign dropout (Chen et al., NeurIPS 2020)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from mtlkit.weighting.base import GradientBalancer
from mtlkit.weighting.registry import register


def graddrop(J: Tensor, U: Tensor, leak: Tensor | float = 0.0) -> Tensor:
    """GradDrop's update from the T×P gradients J and uniform draws U (one per coordinate).

    Sign purity P = ½(1 + Σ_t J_t / Σ_t |J_t|) per coordinate; task t keeps its
    coordinate when (P > U and J_t > 0) or (P < U and J_t < 0); the update is
    Σ_t (ℓ_t + (1 − ℓ_t) M_t) J_t with leak ℓ (a scalar or one value per task).
    Coordinates where every gradient is zero get purity ½ (nothing to keep or drop).
    Written without forming P or masks: P > U ⟺ Σ_t J_t > (2U − 1) Σ_t |J_t|, so the side
    kept is s = sign(Σ_t J_t − (2U − 1) Σ_t |J_t|) (+1 positive parts, −1 negative, 0 none),
    and the kept sum is ½ s (Σ_t |J_t| + s Σ_t J_t); one T×P temporary, |J|, and a few
    passes over P (masks and `torch.where` cost several times more on CPU).
    """
    magnitude = J.abs()
    signed, total = J.sum(dim=0), magnitude.sum(dim=0)
    side = torch.sign(signed - torch.addcmul(-total, U, total, value=2))  # all-zero columns: 0
    leak = torch.as_tensor(leak, dtype=J.dtype).expand(J.shape[0])
    leaking = bool((leak != 0).any())
    if leaking:
        leak = leak.to(J.device)
        signed, total = (1 - leak) @ J, (1 - leak) @ magnitude
    kept = torch.addcmul(total, side, signed).mul_(side).mul_(0.5)
    return kept + leak @ J if leaking else kept


@register("graddrop")
class GradDrop(GradientBalancer):
    """GradDrop: per coordinate, keep only the gradients of one sign, chosen by purity.

    `Just Pick a Sign: Optimizing Deep Multitask Models with Gradient Sign Dropout
    <https://arxiv.org/abs/2010.06808>`_ (Chen et al., NeurIPS 2020), Algorithm 1
    (see `graddrop`). `leak` (default 0.0, the paper's multitask setting) is ℓ, a float
    or one value per task; ℓ_t = 1 lets task t's gradient through untouched (the paper's
    transfer-learning use).

    The paper applies it to the gradient at an activation layer: use `shared_reps`.
    Departure: purity is computed per coordinate of the flattened gradient; the paper
    sums the sign(activation)-weighted gradients over the batch first, which needs the
    activations and their batch axis, not given to a balancer. With shared parameters
    it acts per parameter coordinate. The uniform draws come from a generator on the
    gradients' device seeded with `seed` (default 0); its state is in `state_dict()`
    (resumed on another device type, the draws restart from the seed).
    """

    properties = frozenset({"expected_structure"})

    def __init__(
        self,
        tasks: int | Sequence[str] | None = None,
        leak: float | Sequence[float] = 0.0,
        seed: int = 0,
        chunk_size: int | None = None,
    ) -> None:
        super().__init__(tasks, chunk_size=chunk_size)
        leak_values = torch.as_tensor(leak, dtype=torch.float64).reshape(-1)
        if leak_values.numel() == 0:
            raise ValueError("GradDrop leak must be one value or one value per task, got none")
        if bool(((leak_values < 0) | (leak_values > 1)).any()):
            raise ValueError(f"GradDrop leak values must be in [0, 1], got {leak}")
        if leak_values.numel() > 1 and self.task_names is not None and leak_values.numel() != self.num_tasks:
            raise ValueError(f"GradDrop got {leak_values.numel()} leak values for {self.num_tasks} tasks")
        self.leak = leak_values
        self.seed = seed
        self._generator: torch.Generator | None = None
        self._pending_state: tuple[str, Tensor] | None = None

    def combine(self, J: Tensor, losses: Tensor, index: Tensor) -> tuple[Tensor, None]:
        leak = self.leak if self.leak.numel() == 1 else self.leak[index.cpu()]
        if self.leak.numel() > 1 and leak.numel() != J.shape[0]:
            raise ValueError(f"GradDrop has {self.leak.numel()} leak values but got {J.shape[0]} task gradients")
        U = torch.rand(J.shape[1], generator=self._generator_on(J.device), device=J.device, dtype=J.dtype)
        return graddrop(J, U, leak), None

    def aggregate(self, J: Tensor) -> Tensor:
        return self.combine(J, J.new_zeros(J.shape[0]), torch.arange(J.shape[0]))[0]

    def _generator_on(self, device: torch.device) -> torch.Generator:
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device).manual_seed(self.seed)
            if self._pending_state is not None and self._pending_state[0] == device.type:
                self._generator.set_state(self._pending_state[1])
            self._pending_state = None
        return self._generator

    def get_extra_state(self) -> Any:
        if self._generator is None:
            return {"device": None, "generator": None}
        return {"device": self._generator.device.type, "generator": self._generator.get_state()}

    def set_extra_state(self, state: Any) -> None:
        self._generator = None
        self._pending_state = None if state["generator"] is None else (state["device"], state["generator"])
