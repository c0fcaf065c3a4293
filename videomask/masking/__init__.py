"""Masking: pure kernels (``kernels``) and the strategies built from them (``strategies``).

    from videomask.masking import MaskingConfig, plan, select
    p = plan(MaskingConfig(strategy="difference"))   # what each modality gets, every parameter resolved
    mask = p.patches.draw(scores, valid, generators)  # True = masked; exact budget

See ``kernels`` for the kernel signature and ``strategies`` for the records.
"""
from .kernels import KERNELS, MaskingError, budget_sizes, budgets, select, uniform
from .strategies import (
           STRATEGIES,
           MaskingConfig,
           Plan,
           Side,
           SidePlan,
           Strategy,
           get,
           plan,
           register,
)

__all__ = ["KERNELS", "STRATEGIES", "MaskingConfig", "MaskingError", "Plan", "Side", "SidePlan", "Strategy",
           "budget_sizes", "budgets", "get", "plan", "register", "select", "uniform"]
