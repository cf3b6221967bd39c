"""Fast adaptive multitask optimization (Liu et al., NeurIPS 2023)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from mtlkit.weighting.base import LossBalancer
from mtlkit.weighting.context import POST_STEP_LOSSES
from mtlkit.weighting.registry import register


@register("famo")
class FAMO(LossBalancer):
    """FAMO: decrease every task's log-loss at the same rate, from loss values only.

    `FAMO: Fast Adaptive Multitask Optimization <https://arxiv.org/abs/2306.03792>`_
    (Liu, Feng, Stone, Liu, NeurIPS 2023). With z = softmax(ξ) over the tasks in the
    batch and D_t = L_t − b_t + ε, backpropagates c Σ_t z_t log D_t with
    c = (Σ_t z_t / D_t)^{-1} held constant, i.e. effective weights c z_t / D_t summing to 1.
    The logits ξ are learnt from the log-loss decrease δ_t = log D_t(before) − log D_t(after)
    of the previous step: ξ takes one Adam step along −(∂z/∂ξ)ᵀ δ.

    Where the "after" losses come from: `update(losses)` takes them explicitly (the
    paper's loop recomputes the losses on the same batch after `optimizer.step()`).
    With `post_step=True` (default) FAMO declares the need "post_step_losses"
    (`mtlkit.weighting.context`), so the Trainer does exactly that: one no-grad
    forward on the same batch after each step, then `update`. With `post_step=False`,
    or in a hand-written loop that does not call `update`, the next `backward` uses its
    own losses (the next batch's) as the "after" values before weighting them: no extra
    forward pass, at the price of mixing batch noise into δ. A task absent from either
    batch gets δ_t = 0.

    Defaults (paper): lr = 0.025, weight decay γ = 1e-3, Adam β = (0.9, 0.999), ε = 1e-8,
    lower bounds b = 0. Losses must exceed their bound. The logits and Adam's moments
    are buffers (`state_dict()` carries them; they are not optimiser parameters).
    Needs `tasks` at construction.
    """

    task_names: list[str]  # required: set in __init__
    logits: Tensor
    min_losses: Tensor
    pending_loss: Tensor
    pending: Tensor
    adam_m: Tensor
    adam_v: Tensor
    adam_step: Tensor

    def __init__(
        self,
        tasks: int | Sequence[str] | None = None,
        lr: float = 0.025,
        weight_decay: float = 1e-3,
        min_losses: Sequence[float] | None = None,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        post_step: bool = True,
    ) -> None:
        super().__init__(tasks)
        self.needs = frozenset({POST_STEP_LOSSES}) if post_step else frozenset()
        T = self.num_tasks
        if min_losses is not None and len(min_losses) != T:
            raise ValueError(f"FAMO min_losses has {len(min_losses)} values for {T} tasks")
        self.lr, self.weight_decay, self.betas, self.eps = lr, weight_decay, betas, eps
        self.register_buffer("logits", torch.zeros(T))
        self.register_buffer("min_losses", torch.tensor(min_losses or [0.0] * T, dtype=torch.float32))
        self.register_buffer("pending_loss", torch.zeros(T))
        self.register_buffer("pending", torch.zeros(T, dtype=torch.bool))
        self.register_buffer("adam_m", torch.zeros(T))
        self.register_buffer("adam_v", torch.zeros(T))
        self.register_buffer("adam_step", torch.zeros((), dtype=torch.long))

    def combine(self, losses: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
        self._check_above_bounds(losses, index)
        if bool(self.pending[index].any()):
            self._learn(losses.detach(), index)
        D = losses - self.min_losses[index].to(losses.dtype) + self.eps
        z = torch.softmax(self.logits[index], dim=0).to(losses.dtype)
        c = 1.0 / (z / D.detach()).sum()
        self.pending_loss[index] = losses.detach().to(self.pending_loss.dtype)
        self.pending[index] = True
        return c * (z * torch.log(D)).sum(), (c * z / D).detach()

    @torch.no_grad()
    def update(self, losses: Sequence[Tensor] | Mapping[str, Tensor]) -> None:
        """Learn the logits from the losses measured after the optimizer step.

        `losses` is a list of all T losses in task order, or a {task: loss} dict of some.
        """
        if isinstance(losses, Mapping):
            position = {name: i for i, name in enumerate(self.task_names)}
            index = torch.tensor([position[n] for n in losses], device=self.logits.device)
            values = torch.stack([torch.as_tensor(v).detach().reshape(()) for v in losses.values()])
        else:
            values = torch.stack([torch.as_tensor(v).detach().reshape(()) for v in losses])
            if values.numel() != self.num_tasks:
                raise ValueError(f"FAMO.update got {values.numel()} losses for {self.num_tasks} tasks")
            index = torch.arange(values.numel(), device=self.logits.device)
        self._learn(values.to(self.logits.device), index)

    @torch.no_grad()
    def _learn(self, after: Tensor, index: Tensor) -> None:
        mask = self.pending[index]
        delta = torch.zeros_like(self.logits)
        b = self.min_losses[index]
        change = torch.log(self.pending_loss[index] - b + self.eps) - torch.log(after.to(b.dtype) - b + self.eps)
        delta[index] = torch.where(mask, change, torch.zeros_like(change))
        z = torch.softmax(self.logits, dim=0)
        grad = z * (delta - (z * delta).sum())  # (∂z/∂ξ)ᵀ δ for the softmax
        self._adam_step(grad)
        self.pending[index] = False

    def _adam_step(self, grad: Tensor) -> None:
        beta1, beta2 = self.betas
        grad = grad + self.weight_decay * self.logits  # L2 penalty, as torch.optim.Adam's weight_decay
        self.adam_step += 1
        self.adam_m.mul_(beta1).add_(grad, alpha=1 - beta1)
        self.adam_v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        step = int(self.adam_step)
        m_hat = self.adam_m / (1 - beta1**step)
        v_hat = self.adam_v / (1 - beta2**step)
        self.logits.sub_(self.lr * m_hat / (v_hat.sqrt() + 1e-8))

    def _check_above_bounds(self, losses: Tensor, index: Tensor) -> None:
        above = (losses.detach() > self.min_losses[index].to(losses.dtype)).tolist()
        if not all(above):
            bad = [self.task_names[i] for i, ok in zip(index.tolist(), above) if not ok]
            raise ValueError(f"FAMO needs each loss above its lower bound min_losses; task(s) {bad} are not")
