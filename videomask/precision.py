"""bf16 parameters with fp32 master weights in the optimiser (``run.precision=bf16_params``).

With ``run.precision=bf16`` the model keeps fp32 weights and autocast casts each of them to bf16 in every
forward and backward pass: on the base preset's H200 profile those casts were 15% of the GPU's time. Here the
*trained* parameters are bf16 (no casts), their gradients come out in bf16, and the optimiser updates fp32
copies (the master weights), from which the bf16 parameters are refreshed after every step, so that small
updates are not lost to bf16's 8-bit mantissa. Frozen parameters and buffers (the pixel mean and std, say) stay
fp32, untouched. Autocast stays on: the operations it keeps in fp32 (softmax, norms, losses) still run in fp32.

``to_bf16(model)`` must run before the model is wrapped for DDP (DDP's gradient hooks belong to the parameters
it was built with). With ``optim.grad_accum > 1`` the micro-batches' gradients are summed in bf16 before the
fp32 copy. The checkpoint carries the masters with the optimiser's state, so a resumed run continues exactly;
the exported model is fp32 (the masters). Not with FSDP, which has its own mixed-precision policy.
"""
from __future__ import annotations

import torch
from torch import nn


def to_bf16(model: nn.Module) -> dict[int, torch.Tensor]:
    """Turn ``model``'s trained parameters (``requires_grad``) bf16 in place; returns their fp32 values by the
    parameter's id, the masters of ``MasterWeights``. Tied parameters stay tied (one object, converted once)."""
    masters = {}
    for p in model.parameters():
        if p.requires_grad and id(p) not in masters:
            masters[id(p)] = p.detach().float().clone()
            p.data = p.data.to(torch.bfloat16)
    return masters


class MasterWeights:
    """An optimiser over the fp32 ``masters`` (from ``to_bf16``) of the bf16 parameters in ``groups``.
    ``make(groups)`` builds the inner optimiser from parameter groups (``[{"params": [...], ...}]``): the masters
    take the parameters' places."""

    def __init__(self, groups: list[dict], masters: dict[int, torch.Tensor], make):
        self.params = [p for g in groups for p in g["params"]]
        self.masters = [masters[id(p)] for p in self.params]
        self.opt = make([{**g, "params": [masters[id(p)] for p in g["params"]]} for g in groups])
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
        torch._foreach_copy_(self.params, self.masters)  # one fused cast-and-copy for all parameters
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
        for m, saved in zip(self.masters, state["master"]):
            m.copy_(saved)
        torch._foreach_copy_(self.params, self.masters)

    @torch.no_grad()
    def to_fp32(self):
        """The trained parameters back in fp32 with the masters' values (for the export at the end of the run)."""
        for p, m in zip(self.params, self.masters):
            p.data = m.clone()
