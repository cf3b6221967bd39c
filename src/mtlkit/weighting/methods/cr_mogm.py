"""CR-MOGM: MGDA with its weights smoothed over steps (Zhou et al., NeurIPS 2022)."""

from __future__ import annotations

from collections.abc import Sequence

from mtlkit.weighting.methods.mgda import MGDA
from mtlkit.weighting.registry import register
from mtlkit.weighting.wrappers import GramianWrapper


@register("cr_mogm", "crmogm")
class CRMOGM(GramianWrapper):
    """CR-MOGM: MGDA whose weights are a moving average over steps, damping their noise.

    `On the Convergence of Stochastic Multi-Objective Gradient Manipulation and Beyond
    <https://openreview.net/forum?id=ZLVPx4dD5Y>`_ (Zhou et al., NeurIPS 2022): the
    correlation-reduced variant of a multi-objective gradient manipulation method
    (MOGM) replaces its per-step weights λ̂_k by λ_k = β λ_{k−1} + (1 − β) λ̂_k, which
    the paper shows makes stochastic MGDA-type updates converge. The paper applies the
    correction to MGDA (and other MOGMs); registered here with MGDA, the correction
    being mtlkit's `ema` wrapper, so "mgda@ema=0.9" is the same method and any other
    weighting method takes it too ("upgrad@ema=0.9").

    Defaults: `beta` β = 0.9 (our choice; a hyper-parameter in the paper), MGDA's
    `normalization` 'none'. Departure: the average is bias-corrected (divided by 1 − β^k,
    as in Adam) instead of starting from the first step's weights. Needs `tasks`.
    """

    def __init__(
        self,
        tasks: int | Sequence[str] | None = None,
        beta: float = 0.9,
        normalization: str = "none",
        chunk_size: int | None = None,
    ) -> None:
        if not 0 <= beta < 1:
            raise ValueError(f"CR-MOGM beta must be in [0, 1), got {beta}")
        method = MGDA(tasks, normalization=normalization, chunk_size=chunk_size)
        if method.task_names is None:
            raise ValueError("CR-MOGM keeps one average per task: build it with tasks=<number of tasks or task names>")
        super().__init__(method, every=1, ema=beta)
