"""LoRA linear layers that train through one autograd node: the frozen projection and the adapter in two matmuls.

peft's `lora.Linear` computes `base(x) + lora_B(lora_A(dropout(x))) * scaling` as five autograd nodes: the adapter's
[tokens, out] output is written, scaled in a second pass, added in a third, and backward repeats the scaling and
adds the two input gradients in a further pass. Here the adapter's rank-r product is accumulated straight into the
projection's output (`addmm_`), the scaling rides on the rank-r matmuls, and the adapter's input gradient is
accumulated into the projection's: the same products and no full-size element-wise pass. In fp32 the outputs equal
peft's and the gradients differ in the last bits (the accumulation rounds in another order); under bf16 autocast
the adapter's product is rounded once instead of three times. Measured in a whole SmolLM2 LoRA step on a CPU:
bench/results/train_vs_peers.txt (`ember` vs `ember-peft-layers`).

The layer is peft's own `lora.Linear` (same parameters, state dict, merge, save and load), handed to peft through
its custom-module dispatch (`LoraConfig._register_custom_module`, peft's documented extension point for custom LoRA
layers); it takes the fused path only where it computes what peft's forward does — one active plain-LoRA adapter
on a frozen `nn.Linear` that nothing else hooks — and defers to peft's forward everywhere else (merged or disabled
adapters, DoRA and other variants, mixed-adapter batches, ZeRO-3 or offloaded weights, mixed dtypes outside
autocast). A saved adapter is peft's: it loads with plain `PeftModel.from_pretrained`.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from peft.tuners.lora.layer import Linear as PeftLoraLinear


class _LoraMatmul(torch.autograd.Function):
    """out = x @ W.T (+ bias) + scaling * (lora_x @ A.T) @ B.T, every operand in `dtype` (autocast is off inside: the
    casts are the ones autocast makes for each matmul). `lora_x` is None when the adapter reads `x` itself (no
    dropout), and then the two input gradients are accumulated into one."""

    @staticmethod
    def forward(ctx, x, lora_x, weight, bias, lora_a, lora_b, scaling, dtype):  # noqa: D102
        with torch.autocast(x.device.type, enabled=False):
            x_c = x.to(dtype)
            adapter_in = x_c if lora_x is None else lora_x.to(dtype)
            w, a, b = weight.to(dtype), lora_a.to(dtype), lora_b.to(dtype)
            rows = x_c.reshape(-1, x_c.size(-1))
            down = adapter_in.reshape(-1, adapter_in.size(-1)) @ a.T  # [tokens, r]
            out = rows @ w.T if bias is None else torch.addmm(bias.to(dtype), rows, w.T)
            out.addmm_(down, b.T, alpha=scaling)
        # the frozen weight and lora_A are kept only when an input gradient needs them, as autograd's matmuls do
        needs_x, needs_lora_x = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        ctx.save_for_backward(adapter_in, down, a if needs_x or needs_lora_x else None, b, w if needs_x else None)
        ctx.scaling, ctx.dtype, ctx.shared = scaling, dtype, lora_x is None
        ctx.x_dtype = x.dtype
        ctx.lora_x_dtype = None if lora_x is None else lora_x.dtype
        ctx.param_dtypes = (lora_a.dtype, lora_b.dtype)
        return out.view(*x.shape[:-1], out.size(-1))

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        adapter_in, down, a, b, w = ctx.saved_tensors
        s = ctx.scaling
        g = grad.to(ctx.dtype).reshape(-1, grad.size(-1))
        inputs = adapter_in.reshape(-1, adapter_in.size(-1))
        grad_down = g @ b  # d out / d down, before the scaling
        grad_b = (g.T @ down).mul_(s).to(ctx.param_dtypes[1])
        grad_a = (grad_down.T @ inputs).mul_(s).to(ctx.param_dtypes[0])
        grad_x = grad_lora_x = None
        shape = (*grad.shape[:-1], adapter_in.size(-1))
        if w is not None:
            grad_x = g @ w
            if ctx.shared:
                grad_x.addmm_(grad_down, a, alpha=s)
            grad_x = grad_x.view(shape).to(ctx.x_dtype)
        if not ctx.shared and ctx.needs_input_grad[1]:
            grad_lora_x = (grad_down @ a).mul_(s).view(shape).to(ctx.lora_x_dtype)
        return grad_x, grad_lora_x, None, None, grad_a, grad_b, None, None


class FusedLoraLinear(PeftLoraLinear):
    """peft's `lora.Linear` with the fused training path (module docstring)."""

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        adapter = None if args or kwargs else self._fusable_adapter(x)
        if adapter is None:
            return super().forward(x, *args, **kwargs)
        base = self.get_base_layer()
        dtype = _compute_dtype(x, base.weight, self.lora_A[adapter].weight, self.lora_B[adapter].weight)
        if dtype is None:
            return super().forward(x, *args, **kwargs)
        # the adapter's input as peft makes it: cast to the adapter's dtype (unless switched off), then dropout
        lora_x = self._cast_input_dtype(x, self.lora_A[adapter].weight.dtype)
        dropout = self.lora_dropout[adapter]
        if self.training and not isinstance(dropout, torch.nn.Identity):
            lora_x = dropout(lora_x)
        elif lora_x is x:
            lora_x = None
        return _LoraMatmul.apply(x, lora_x, base.weight, base.bias, self.lora_A[adapter].weight,
                                 self.lora_B[adapter].weight, self.scaling[adapter], dtype)

    def _fusable_adapter(self, x: torch.Tensor) -> Optional[str]:
        """The one adapter the fused path computes as peft's forward does, or None (then peft's forward runs)."""
        if self.disable_adapters or self.merged or not torch.is_floating_point(x):
            return None
        active = [name for name in self.active_adapters if name in self.lora_A]
        if len(active) != 1 or active[0] in self.lora_variant or self.lora_B[active[0]].bias is not None:
            return None
        base = self.get_base_layer()
        weight = base.weight
        if (type(base) is not torch.nn.Linear or base._forward_hooks or base._forward_pre_hooks
                or hasattr(base, "_hf_hook") or type(weight) is not torch.nn.Parameter or weight.requires_grad
                or weight.shape != (base.out_features, base.in_features) or weight.device != x.device
                or (base.bias is not None and base.bias.requires_grad)):
            return None  # trained, sharded (ZeRO-3), offloaded or hooked base weights: peft's forward
        return active[0]


def _compute_dtype(x: torch.Tensor, weight: torch.Tensor, lora_a: torch.Tensor,
                   lora_b: torch.Tensor) -> Optional[torch.dtype]:
    """The dtype every matmul of the layer runs in: autocast's, or the one all operands share (else None)."""
    device = x.device.type
    if torch.is_autocast_enabled(device):
        floats = (torch.float32, torch.bfloat16, torch.float16)  # the dtypes autocast casts
        return torch.get_autocast_dtype(device) if all(t.dtype in floats for t in (x, weight, lora_a, lora_b)) else None
    return x.dtype if x.dtype == weight.dtype == lora_a.dtype == lora_b.dtype else None


def register_fused_lora(config) -> bool:
    """Have peft build `FusedLoraLinear` for the `nn.Linear` layers `config` adapts (plain float bases only: a
    bitsandbytes layer is an `nn.Linear` too, and must keep peft's own dispatch). False where this peft has no
    custom-layer dispatch (experimental since peft 0.15): its own layers then train, as with `method.fused: false`."""
    register = getattr(config, "_register_custom_module", None)
    if register is None:
        return False
    register({torch.nn.Linear: FusedLoraLinear})
    return True
