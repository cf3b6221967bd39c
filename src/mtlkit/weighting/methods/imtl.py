"""Impartial multi-task learning (Liu et al., ICLR 2021): IMTL-G, IMTL-L and the hybrid."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mtlkit.weighting.base import BalanceResult, Collectives, GradientBalancer, LossBalancer, Losses, Params, Reps
from mtlkit.weighting.registry import register

_METHODS = ("gradient", "loss", "hybrid")


def imtl_g_weights(G: Tensor, eps: float = 1e-12) -> Tensor:
    """IMTL-G's α from the Gramian: Σ_t α_t = 1 and g = Σ_t α_t g_t has equal projections gᵀu_t.

    Equal projections gᵀu_t = (Gα)_t / ‖g_t‖ = λ mean Gα = λ n (n_t = ‖g_t‖), so α ∝ G⁺n,
    normalised to sum 1: the paper's closed form when the gradients are linearly
    independent, and its generalisation to dependent ones by the pseudo-inverse (Quinton
    & Rey, 2024), which treats every task alike (the result does not depend on the task
    order). Tasks whose gradient norm is <= eps·max norm have no direction and get α_t = 0
    (zero rows and columns of G have zero rows in G⁺). When Σ G⁺n vanishes, no
    α summing to 1 exists and α = 0.
    """
    G64 = G.detach().double()
    top = float(G64.diagonal().max()) if G64.numel() else 0.0
    if top <= 0:
        return torch.zeros(G.shape[0], dtype=G.dtype, device=G.device)
    Gs = G64 / top  # scale-free problem: the tolerances below are relative
    norms = Gs.diagonal().clamp(min=0).sqrt()
    norms = torch.where(norms > eps, norms, torch.zeros_like(norms))
    v = torch.linalg.pinv(Gs, hermitian=True) @ norms
    total = float(v.sum())
    alpha = v / total if abs(total) > 1e-12 else torch.zeros_like(v)
    return alpha.to(dtype=G.dtype, device=G.device)


@register("imtl_g")
class IMTLG(GradientBalancer):
    """IMTL-G: the update whose projections onto every unit task gradient are equal.

    `Towards Impartial Multi-task Learning <https://openreview.net/forum?id=IMPnRXEWpvr>`_ (Liu et al., ICLR 2021),
    Section 3.1, Eq. (2) (see `imtl_g_weights`). The weights are not constrained to be
    positive, as in the paper. Stateless; no options. With
    `shared_reps` it balances the gradients at the last shared feature, as the paper does.
    """

    properties = frozenset({"expected_structure", "permutation_invariant"})

    def weights(self, G: Tensor) -> Tensor:
        return imtl_g_weights(G)


@register("imtl_l")
class IMTLL(LossBalancer):
    """IMTL-L: learnable loss scales, minimising Σ_t (e^{s_t} L_t − s_t).

    `Towards Impartial Multi-task Learning <https://openreview.net/forum?id=IMPnRXEWpvr>`_ (Liu et al., ICLR 2021),
    Section 3.2, Eq. (6). For fixed losses the optimum is e^{s_t} L_t = 1.
    `log_scale` (s) is an `nn.Parameter`: pass `balancer.parameters()` to the optimizer.
    Defaults: s_t initialised to `init` = 0. Needs `tasks` at construction.
    """

    def __init__(self, tasks: int | Sequence[str] | None = None, init: float = 0.0) -> None:
        super().__init__(tasks)
        self.log_scale = nn.Parameter(torch.full((self.num_tasks,), float(init)))

    def combine(self, losses: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
        s = self.log_scale[index]
        return (torch.exp(s) * losses - s).sum(), torch.exp(s).detach()


@register("imtl", "imtl_h", "imtl_hybrid")
class IMTL(GradientBalancer):
    """IMTL with the IMTL seed's interface: `IMTL(method, num_losses, init_loss)`.

    `Towards Impartial Multi-task Learning <https://openreview.net/forum?id=IMPnRXEWpvr>`_ (Liu et al., ICLR 2021).
    `method`:

    - 'gradient': IMTL-G on the raw losses (no parameters).
    - 'loss': IMTL-L alone; the shared part gets Σ_t e^{s_t} ∇L_t (no task gradients taken).
    - 'hybrid' (default, the paper's Algorithm 1): the scaled losses e^{s_t} L_t give the
      task gradients from which IMTL-G computes α; the shared part gets
      Σ_t α_t e^{s_t} ∇L_t, task-specific parameters e^{s_t} ∇L_t, and s_t the gradient
      of e^{s_t} L_t − s_t.

    The scales s (`log_scale`, for 'loss'/'hybrid') are an `nn.Parameter`; add them to the
    optimizer with `itertools.chain(net.parameters(), imtl.parameters())`. `init_loss` is
    the list of initial s_t (the seed's "initial scaling values"; default 0, i.e. scale 1;
    the seed's draft used 1). `num_losses` and `tasks` both size the state (give either).

    `backward` takes the seed's keywords too: `imtl.backward(shared_parameters=[model.parameters()],
    losses=[...])`, or `imtl.backward(z=feature, losses=[...])` for IMTL-G at the shared
    feature z as in the paper. It runs the backward pass itself and unpacks as
    `(grad_loss, scaled_losses)`: grad_loss = Σ_t α_t e^{s_t} L_t (what the shared part
    descends), scaled_losses = {task: e^{s_t} L_t − s_t} ('gradient': {task: α_t L_t}).
    Losses with `requires_grad=False` are skipped. Passing all of `model.parameters()` as
    shared, as the seed's example does, also weights each head by its α_t; pass only the
    trunk's parameters to give heads their unweighted gradient, as in the paper.
    """

    properties = frozenset({"expected_structure"})

    def __init__(
        self,
        method: str = "hybrid",
        num_losses: int | None = None,
        init_loss: Sequence[float] | None = None,
        *,
        tasks: int | Sequence[str] | None = None,
        chunk_size: int | None = None,
    ) -> None:
        if method not in _METHODS:
            raise ValueError(f"IMTL method must be one of {_METHODS}, got {method!r}")
        if num_losses is not None and tasks is not None:
            count = tasks if isinstance(tasks, int) else len(tasks)
            if count != num_losses:
                raise ValueError(f"IMTL got num_losses={num_losses} but {count} tasks")
        super().__init__(tasks if tasks is not None else num_losses, chunk_size=chunk_size)
        self.method = method
        if method != "gradient":
            if self.task_names is None:
                raise ValueError(
                    f"IMTL(method={method!r}) learns one scale per loss: give num_losses=<number of losses>"
                )
            init = torch.zeros(self.num_tasks) if init_loss is None else torch.tensor(init_loss, dtype=torch.float32)
            if init.shape != (self.num_tasks,):
                raise ValueError(f"IMTL init_loss has {init.numel()} values for {self.num_tasks} losses")
            self.log_scale = nn.Parameter(init.clone())

    def backward(
        self,
        losses: Losses | None = None,
        shared_params: Params | None = None,
        shared_reps: Reps | None = None,
        *,
        shared_parameters: Params | None = None,
        z: Reps | None = None,
        collectives: Collectives | None = None,
    ) -> BalanceResult:
        """Balance and backpropagate `losses`; `shared_parameters`/`z` are the seed's names."""
        if losses is None:
            raise ValueError("IMTL.backward needs losses=[...] (a list or a {task: loss} dict)")
        if shared_parameters is not None and shared_params is not None:
            raise ValueError("give shared_parameters or shared_params, not both (they are the same)")
        if z is not None and shared_reps is not None:
            raise ValueError("give z or shared_reps, not both (they are the same)")
        return super().backward(
            losses,
            shared_params=shared_params if shared_params is not None else shared_parameters,
            shared_reps=shared_reps if shared_reps is not None else z,
            collectives=collectives,
        )

    def weights(self, G: Tensor) -> Tensor:
        return imtl_g_weights(G)

    def _backward(self, names, index, losses, shared_params, shared_reps) -> BalanceResult:
        if self.method == "gradient":
            return super()._backward(names, index, losses, shared_params, shared_reps)
        raw = torch.stack(losses).detach()
        s = self.log_scale[index]
        stats = {}
        if self.method == "loss":
            (torch.exp(s) * torch.stack(losses) - s).sum().backward()
            alpha = torch.ones_like(raw)
        else:
            # Each scaled loss keeps its own graph (the engine differentiates them one by one
            # at the representation); s_t receives ∂(e^{s_t} L_t)/∂s_t through it, the −1 below.
            scaled = [torch.exp(self.log_scale[i]) * loss for i, loss in zip(index.tolist(), losses)]
            g, weights = self._shared_backward(names, index, scaled, shared_params, shared_reps)
            if weights is None:  # IMTL-G defines `weights(G)`, so the engine always reports them
                raise RuntimeError("IMTL's gradient step returned no task weights")
            alpha = weights
            (-self.log_scale[index]).sum().backward()
            stats["grad_norm"] = g.detach().norm()
        s = s.detach()
        w = alpha.detach() * torch.exp(s)
        return BalanceResult(
            loss=(w * raw).sum(),
            scaled_losses=dict(zip(names, torch.exp(s) * raw - s)),
            weights=dict(zip(names, w)),
            stats=stats,
        )
