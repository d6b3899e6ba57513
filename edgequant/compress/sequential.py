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
from edgequant.compress.awq import AWQConfig, can_fold, fold_scale, search_clip, search_scale
from edgequant.compress.gptq import GPTQConfig, gptq_quantize, output_error
from edgequant.compress.grid import dequantize_weight, quantize_weight
from edgequant.compress.qlinear import QuantizedLinear, set_submodule
from edgequant.compress.scheme import QuantScheme
from edgequant.models.adapters import ArchitectureAdapter

METHODS = ("rtn", "gptq", "awq", "awq+gptq")


@dataclass
class SequentialSettings:
    method: str = "gptq"
    gptq: GPTQConfig = field(default_factory=GPTQConfig)
    awq: AWQConfig = field(default_factory=AWQConfig)
    rtn_mse: bool = False  # range search for RTN groups
    true_sequential: bool = True
    batch_size: int = 8
    device: str = "cpu"

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("device")
        d.pop("batch_size")
        if "gptq" not in self.method:
            d.pop("gptq")
        if "awq" not in self.method:
            d.pop("awq")
        return d


class _HessianHook:
    """Accumulates ``X^T X`` of the input that a group of linears shares, separately for calibration
    and guard batches."""

    def __init__(self, in_features: int, device: str) -> None:
        self.h = {"calib": torch.zeros(in_features, in_features, device=device), "guard": None}
        self.n = {"calib": 0, "guard": 0}
        self.tag = "calib"

    def __call__(self, module, args) -> None:
        x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
        if self.h[self.tag] is None:
            self.h[self.tag] = torch.zeros_like(self.h["calib"])
        self.h[self.tag].addmm_(x.t(), x)
        self.n[self.tag] += x.shape[0]

    def hessian(self, tag: str) -> torch.Tensor | None:
        h = self.h[tag]
        return None if h is None else h * (2.0 / max(1, self.n[tag]))


class _StopBlock(Exception):
    """Raised once the last linear of the group being calibrated has seen its input: the rest of the
    block need not run for this pass."""


def _stop(module, args, output):
    raise _StopBlock


def _run_block(block: nn.Module, batches: list[BlockBatch], hooks=(), keep: bool = False):
    outs = []
    for b in batches:
        for hook in hooks:
            hook.tag = b.tag
        try:
            y = block(b.hidden, **b.kwargs)
        except _StopBlock:
            continue
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
    w_rtn = dequantize_weight(*rtn).to(w.device)
    w_gptq = dequantize_weight(*gptq).to(w.device)
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
        qlin, errors[name] = _rtn_linear(model.get_submodule(name), schemes[name], mse)
        set_submodule(model, name, qlin)
    return errors


class _InputCatcher:
    """Keeps the inputs (positional and keyword) a module receives, for the first ``limit`` batches."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.inputs: list[tuple[tuple, dict]] = []

    def __call__(self, module, args, kwargs) -> None:
        if len(self.inputs) < self.limit:
            self.inputs.append((tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args), dict(kwargs)))


def _apply_awq(block: nn.Module, adapter: ArchitectureAdapter, prefix: str, schemes: dict[str, QuantScheme], batches: list[BlockBatch], settings: SequentialSettings) -> dict[str, dict]:
    """Search and fold AWQ scales for every group of ``block`` (float weights), then clip."""
    cfg = settings.awq
    n_batches = max(1, -(-cfg.samples // settings.batch_size))
    calib = [b for b in batches if b.tag == "calib"][:n_batches]
    catchers, handles = {}, []
    for g in adapter.groups:
        catchers[g.inspect] = _InputCatcher(n_batches)
        handles.append(block.get_submodule(g.inspect).register_forward_pre_hook(catchers[g.inspect], with_kwargs=True))
    try:
        _run_block(block, calib)
    finally:
        for hd in handles:
            hd.remove()
    records: dict[str, dict] = {}
    for g in adapter.groups:
        names = [n for n in g.linears if prefix + n in schemes]
        if len(names) != len(g.linears):
            continue  # a group partly left in float keeps its weights as they are
        linears = [block.get_submodule(n) for n in g.linears]
        prev = block.get_submodule(g.prev)
        inspect = block.get_submodule(g.inspect)
        inputs = catchers[g.inspect].inputs
        # what the group's linears read is what its inspect module receives (attention, MLP, or the linear)
        x = torch.cat([(a[0] if a else k["hidden_states"]).reshape(-1, linears[0].in_features) for a, k in inputs]).float()
        rec = {"awq_alpha": None}
        if can_fold(prev, linears):
            x_mean = x.abs().mean(dim=0)
            alpha, scale, losses = search_scale(inspect, inputs, linears, [schemes[prefix + n] for n in g.linears], x_mean, cfg.grid)
            fold_scale(prev, linears, scale)
            x = x / scale
            rec = {"awq_alpha": alpha, "awq_loss_gain": round(losses[0] / max(min(losses), 1e-30), 4)}
        if cfg.clip and not any(n.endswith(("q_proj", "k_proj")) for n in g.linears):
            rows = x[torch.linspace(0, x.shape[0] - 1, min(cfg.clip_tokens, x.shape[0])).long()]
            for lin, n in zip(linears, g.linears):
                lin.weight.data = search_clip(lin.weight.detach(), rows, schemes[prefix + n], cfg)
        for n in g.linears:
            records[prefix + n] = dict(rec)
    return records


@torch.inference_mode()
def calibrated_quantize_model(
    model: nn.Module,
    adapter: ArchitectureAdapter,
    schemes: dict[str, QuantScheme],
    windows: torch.Tensor,
    settings: SequentialSettings,
    guard_windows: torch.Tensor | None = None,
    progress: bool = True,
) -> dict[str, dict]:
    """GPTQ, AWQ or AWQ+GPTQ of every block linear named in ``schemes`` (full names), block by block,
    then the lm_head (GPTQ on the final norm's outputs, or RTN) if ``schemes`` names it."""
    from tqdm.auto import tqdm

    method = settings.method
    use_awq = method in ("awq", "awq+gptq")
    use_gptq = method in ("gptq", "awq+gptq")
    device = settings.device
    blocks = adapter.block_list(model)
    batches = capture_block_inputs(model, blocks[0], windows, settings.batch_size, device)
    if guard_windows is not None:
        batches += capture_block_inputs(model, blocks[0], guard_windows, settings.batch_size, device, tag="guard")
    passes = [[g] for g in adapter.groups] if settings.true_sequential else [list(adapter.groups)]
    errors: dict[str, dict] = {}
    bar = tqdm(range(len(blocks)), desc=method.upper(), disable=not progress, unit="block")
    for i in bar:
        block = blocks[i]
        block.to(device)
        prefix = f"{adapter.blocks}.{i}."
        awq_records = _apply_awq(block, adapter, prefix, schemes, batches, settings) if use_awq else {}
        if use_gptq:
            for pass_groups in passes:
                active = [g for g in pass_groups if any(prefix + n in schemes for n in g.linears)]
                if not active:
                    continue
                # the linears of a group read the same input: one Hessian serves them all
                hooks, handles = [], []
                for g in active:
                    first = block.get_submodule(g.linears[0])
                    hooks.append(_HessianHook(first.in_features, device))
                    handles.append(first.register_forward_pre_hook(hooks[-1]))
                handles.append(block.get_submodule(active[-1].linears[-1]).register_forward_hook(_stop))
                try:
                    _run_block(block, batches, hooks)
                finally:
                    for hd in handles:
                        hd.remove()
                for g, hook in zip(active, hooks):
                    for n in g.linears:
                        if prefix + n not in schemes:
                            continue
                        qlin, err = _solve_linear(block.get_submodule(n), hook, schemes[prefix + n], settings)
                        set_submodule(block, n, qlin.to(device))
                        errors[prefix + n] = {**awq_records.get(prefix + n, {}), **err}
                del hooks
        else:
            for n in adapter.linear_names():
                if prefix + n in schemes:
                    qlin, err = _rtn_linear(block.get_submodule(n), schemes[prefix + n], settings.rtn_mse)
                    set_submodule(block, n, qlin.to(device))
                    errors[prefix + n] = {**awq_records.get(prefix + n, {}), **err}
        outs = _run_block(block, batches, keep=True)
        for b, y in zip(batches, outs):
            b.hidden = y
        block.to("cpu")
        key = "gptq_calib" if use_gptq else "rtn_weight"
        errs = [errors[prefix + n][key] for n in adapter.linear_names() if prefix + n in errors]
        if errs:
            bar.set_postfix(err=f"{sum(errs) / len(errs):.4f}")
    if adapter.lm_head in schemes:
        errors[adapter.lm_head] = _quantize_head(model, adapter, schemes[adapter.lm_head], batches, settings, use_gptq)
    return errors


def _rtn_linear(linear: nn.Linear, scheme: QuantScheme, mse: bool) -> tuple[QuantizedLinear, dict]:
    w = linear.weight.detach().float()
    codes, scales, zeros = quantize_weight(w, scheme, mse=mse)
    q = dequantize_weight(codes, scales, zeros).to(w.device)
    err = {"rtn_weight": round(float(((w - q) ** 2).sum() / (w**2).sum().clamp(min=1e-30)), 8), "chosen": "rtn"}
    bias = linear.bias.detach() if linear.bias is not None else None
    return QuantizedLinear(codes, scales, zeros, scheme, bias=bias), err


def _quantize_head(model: nn.Module, adapter: ArchitectureAdapter, scheme: QuantScheme, batches: list[BlockBatch], settings: SequentialSettings, use_gptq: bool) -> dict:
    """The output projection: GPTQ against the final norm's outputs, or RTN."""
    head = model.get_submodule(adapter.lm_head)
    if not use_gptq:
        qlin, err = _rtn_linear(head, scheme, settings.rtn_mse)
    else:
        norm = model.get_submodule(adapter.final_norm).to(settings.device)
        hook = _HessianHook(head.in_features, settings.device)
        for b in batches:
            hook.tag = b.tag
            hook(None, (norm(b.hidden),))
        head_dev = nn.Linear(head.in_features, head.out_features, bias=head.bias is not None)
        head_dev.weight = nn.Parameter(head.weight.detach().to(settings.device), requires_grad=False)
        qlin, err = _solve_linear(head_dev, hook, scheme, settings)
        norm.to("cpu")
    set_submodule(model, adapter.lm_head, qlin)
    return err


def gptq_quantize_model(*args, **kwargs) -> dict[str, dict]:
    return calibrated_quantize_model(*args, **kwargs)
