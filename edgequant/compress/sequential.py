"""The sequential driver: quantize a model block by block.

For block i it takes the inputs block i receives (from the already quantized blocks before it),
accumulates the Hessian of each linear's inputs with forward hooks, solves each linear, and then
recomputes the block's outputs with the quantized weights as the inputs of block i+1. With
``true_sequential`` the linears of a block are solved group by group in execution order (q/k/v, o,
gate/up, down), each group seeing the outputs of the groups already quantized. Memory holds one block's
activations for the calibration samples, never the whole model's.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from edgequant.calibration.capture import BlockBatch, capture_block_inputs
from edgequant.compress.gptq import GPTQConfig, gptq_quantize, output_error
from edgequant.compress.grid import dequantize_weight, quantize_weight
from edgequant.compress.qlinear import QuantizedLinear, set_submodule
from edgequant.compress.scheme import QuantScheme
from edgequant.models.adapters import ArchitectureAdapter

METHODS = ("rtn", "gptq")


@dataclass
class SequentialSettings:
    method: str = "gptq"
    gptq: GPTQConfig = field(default_factory=GPTQConfig)
    rtn_mse: bool = False  # range search for RTN groups
    true_sequential: bool = True
    batch_size: int = 8
    device: str = "cpu"

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("device")
        d.pop("batch_size")
        return d


class _HessianHook:
    """Accumulates ``X^T X`` of a linear's inputs, separately for calibration and guard batches."""

    def __init__(self, in_features: int, device: str) -> None:
        self.h = {"calib": torch.zeros(in_features, in_features, device=device), "guard": None}
        self.n = {"calib": 0, "guard": 0}
        self.tag = "calib"
        self.device = device

    def __call__(self, module, args, output) -> None:
        x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
        if self.h[self.tag] is None:
            self.h[self.tag] = torch.zeros_like(self.h["calib"])
        self.h[self.tag].addmm_(x.t(), x)
        self.n[self.tag] += x.shape[0]

    def hessian(self, tag: str) -> torch.Tensor | None:
        h = self.h[tag]
        return None if h is None else h * (2.0 / max(1, self.n[tag]))


def _run_block(block: nn.Module, batches: list[BlockBatch], hooks: list[_HessianHook] | None = None, keep: bool = False):
    outs = []
    for b in batches:
        for hk in hooks or ():
            hk.tag = b.tag
        y = block(b.hidden, **b.kwargs)
        y = y[0] if isinstance(y, tuple) else y
        if keep:
            outs.append(y)
    return outs


def _solve_linear(
    linear: nn.Linear, hook: _HessianHook, scheme: QuantScheme, settings: SequentialSettings
) -> tuple[QuantizedLinear, dict]:
    w = linear.weight.detach().float()
    h_cal = hook.hessian("calib")
    h_guard = hook.hessian("guard")
    rtn = quantize_weight(w, scheme, mse=settings.rtn_mse or settings.gptq.mse)
    gptq = gptq_quantize(w, h_cal, scheme, settings.gptq)
    w_rtn = dequantize_weight(*rtn)
    w_gptq = dequantize_weight(*gptq)
    err = {"gptq_calib": output_error(w, w_gptq, h_cal), "rtn_calib": output_error(w, w_rtn, h_cal)}
    chosen = gptq
    err["chosen"] = "gptq"
    if h_guard is not None:
        err["gptq_guard"] = output_error(w, w_gptq, h_guard)
        err["rtn_guard"] = output_error(w, w_rtn, h_guard)
        if err["rtn_guard"] < err["gptq_guard"]:
            chosen, err["chosen"] = rtn, "rtn"
    bias = linear.bias.detach() if linear.bias is not None else None
    return QuantizedLinear(*chosen, scheme, bias=bias), {k: (round(v, 8) if isinstance(v, float) else v) for k, v in err.items()}


def rtn_quantize_model(model: nn.Module, schemes: dict[str, QuantScheme], mse: bool = False, progress: bool = True) -> dict[str, dict]:
    """Round-to-nearest of every listed linear; no calibration."""
    from tqdm.auto import tqdm

    errors = {}
    for name in tqdm(list(schemes), desc="RTN", disable=not progress, unit="linear"):
        linear = model.get_submodule(name)
        w = linear.weight.detach().float()
        codes, scales, zeros = quantize_weight(w, schemes[name], mse=mse)
        q = dequantize_weight(codes, scales, zeros)
        errors[name] = {"rtn_weight": round(float(((w - q) ** 2).sum() / (w**2).sum().clamp(min=1e-30)), 8), "chosen": "rtn"}
        bias = linear.bias.detach() if linear.bias is not None else None
        set_submodule(model, name, QuantizedLinear(codes, scales, zeros, schemes[name], bias=bias))
    return errors


@torch.inference_mode()
def gptq_quantize_model(
    model: nn.Module,
    adapter: ArchitectureAdapter,
    schemes: dict[str, QuantScheme],
    windows: torch.Tensor,
    settings: SequentialSettings,
    guard_windows: torch.Tensor | None = None,
    progress: bool = True,
) -> dict[str, dict]:
    """GPTQ of every linear named in ``schemes`` (full names), block by block."""
    from tqdm.auto import tqdm

    device = settings.device
    blocks = adapter.block_list(model)
    batches = capture_block_inputs(model, blocks[0], windows, settings.batch_size, device)
    if guard_windows is not None:
        batches += capture_block_inputs(model, blocks[0], guard_windows, settings.batch_size, device, tag="guard")
    groups = [g.linears for g in adapter.groups] if settings.true_sequential else [tuple(adapter.linear_names())]
    errors: dict[str, dict] = {}
    bar = tqdm(range(len(blocks)), desc=settings.method.upper(), disable=not progress, unit="block")
    for i in bar:
        block = blocks[i]
        block.to(device)
        prefix = f"{adapter.blocks}.{i}."
        for group in groups:
            names = [n for n in group if prefix + n in schemes]
            if not names:
                continue
            hooks, handles = [], []
            for n in names:
                lin = block.get_submodule(n)
                hk = _HessianHook(lin.in_features, device)
                hooks.append(hk)
                handles.append(lin.register_forward_hook(hk))
            try:
                _run_block(block, batches, hooks)
            finally:
                for hd in handles:
                    hd.remove()
            for n, hk in zip(names, hooks):
                qlin, err = _solve_linear(block.get_submodule(n), hk, schemes[prefix + n], settings)
                set_submodule(block, n, qlin.to(device))
                errors[prefix + n] = err
        outs = _run_block(block, batches, keep=True)
        for b, y in zip(batches, outs):
            b.hidden = y
        block.to("cpu")
        mean = sum(errors[prefix + n]["gptq_calib"] for n in adapter.linear_names() if prefix + n in errors)
        bar.set_postfix(err=f"{mean / max(1, len(adapter.linear_names())):.4f}")
    return errors
