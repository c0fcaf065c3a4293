"""bf16 parameters with fp32 master weights in the optimiser (``run.precision=bf16_params``).

With ``run.precision=bf16`` the model keeps fp32 weights and autocast casts each of them to bf16 in every
forward and backward pass: on the base preset's H200 profile those casts were 15% of the GPU's time. Here the
model's parameters *are* bf16 (no casts), the gradients come out in bf16, and the optimiser updates fp32 copies
(the master weights), from which the bf16 parameters are refreshed after every step, so that small updates are
not lost to bf16's 8-bit mantissa. Autocast stays on: the operations it keeps in fp32 (softmax, norms, losses)
still run in fp32.

The checkpoint carries the masters (with the optimiser's state), so a resumed run continues exactly; the
exported model is fp32 (the masters). Not with FSDP, which has its own mixed-precision policy.
"""
from __future__ import annotations

import torch
from torch import nn


class MasterWeights:
    """An optimiser over fp32 copies of ``model``'s parameters, which it turns to bf16. ``make(groups)`` builds
    the inner optimiser from parameter groups (``[{"params": [...], ...}]``) given as lists of the model's
    parameters: the masters take their places."""

    def __init__(self, model: nn.Module, groups: list[dict], make):
        self.params = [p for g in groups for p in g["params"]]
        self.masters = [p.detach().float().clone() for p in self.params]
        index = {id(p): k for k, p in enumerate(self.params)}
        self.opt = make([{**g, "params": [self.masters[index[id(p)]] for p in g["params"]]} for g in groups])
        model.to(torch.bfloat16)  # parameters and float buffers; the masters keep the fp32 values
        self._copied = False

    @property
    def param_groups(self):
        return self.opt.param_groups

    @torch.no_grad()
    def master_grads(self) -> list[torch.Tensor]:
        """The masters with the bf16 gradients copied in as fp32 (once per step): what clipping works on."""
        if not self._copied:
            for p, m in zip(self.params, self.masters):
                m.grad = None if p.grad is None else p.grad.float()
            self._copied = True
        return self.masters

    @torch.no_grad()
    def step(self):
        self.master_grads()
        self.opt.step()
        for p, m in zip(self.params, self.masters):
            p.copy_(m)
        self._copied = False

    def zero_grad(self, set_to_none: bool = True):
        for p, m in zip(self.params, self.masters):
            p.grad = m.grad = None
        self._copied = False

    def state_dict(self) -> dict:
        return {"optimizer": self.opt.state_dict(), "master": [m.clone() for m in self.masters]}

    @torch.no_grad()
    def load_state_dict(self, state: dict):
        self.opt.load_state_dict(state["optimizer"])
        for p, m, saved in zip(self.params, self.masters, state["master"]):
            m.copy_(saved)
            p.copy_(m)

    @torch.no_grad()
    def to_fp32(self, model: nn.Module):
        """``model`` back in fp32 with the masters' values (for the export at the end of the run)."""
        model.float()
        for p, m in zip(self.params, self.masters):
            p.copy_(m)
