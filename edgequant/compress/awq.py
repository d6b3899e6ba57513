"""AWQ (Lin et al., 2024): activation-aware weight quantization.

For each group of linears that share an input, the input channels that carry large activations matter
most. AWQ scales those weight columns up by ``s = mean|x| ** alpha`` before rounding (and the preceding
norm or linear down by the same ``s``, so the float model computes exactly the same function), which
gives the salient channels a finer grid. ``alpha`` in [0, 1] is chosen by a grid search that minimises
the error of the group's output module (the attention, the MLP, or the linear itself) on calibration
inputs after quantization. An optional clipping search then narrows each weight group's range where
that lowers the error of the group's output.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from edgequant.compress.grid import fake_quantize, group_params
from edgequant.compress.scheme import QuantScheme


@dataclass(frozen=True)
class AWQConfig:
    grid: int = 20  # alpha in {0, 1/grid, ..., (grid-1)/grid}
    clip: bool = True
    clip_grid: int = 20
    max_shrink: float = 0.5  # clipping tries ranges from 1.0 down to 1 - max_shrink
    clip_tokens: int = 512  # input rows used for the clipping search
    samples: int = 32  # calibration windows used for the searches

    def to_dict(self) -> dict:
        return asdict(self)


def fake_quant_weight(w: torch.Tensor, scheme: QuantScheme) -> torch.Tensor:
    """Round-to-nearest, dequantized, same shape as ``w`` (float32)."""
    out_f, in_f = w.shape
    g = scheme.group_width(in_f)
    groups = w.float().reshape(-1, g)
    return fake_quantize(groups, group_params(groups, scheme), scheme).reshape(out_f, in_f)


def _output(out) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


@torch.inference_mode()
def search_scale(
    inspect: nn.Module,
    inputs: list[tuple[tuple, dict]],
    linears: list[nn.Linear],
    schemes: list[QuantScheme],
    x_mean: torch.Tensor,
    grid: int,
) -> tuple[float, torch.Tensor, list[float]]:
    """Best alpha, its (normalised) scales, and the loss of every alpha tried."""
    originals = [lin.weight.detach().clone() for lin in linears]
    ref = [_output(inspect(*a, **k)) for a, k in inputs]
    losses = []
    best = (float("inf"), 0.0, torch.ones_like(x_mean))
    try:
        for step in range(grid):
            alpha = step / grid
            s = x_mean.pow(alpha).clamp(min=1e-4)
            s = s / (s.max() * s.min()).sqrt()
            for lin, w, sch in zip(linears, originals, schemes):
                lin.weight.data = (fake_quant_weight(w * s, sch) / s).to(w.dtype)
            loss = sum(float((_output(inspect(*a, **k)) - r).float().pow(2).mean()) for (a, k), r in zip(inputs, ref)) / len(ref)
            losses.append(loss)
            if loss < best[0]:
                best = (loss, alpha, s.clone())
    finally:
        for lin, w in zip(linears, originals):
            lin.weight.data = w
    return best[1], best[2], losses


@torch.no_grad()
def fold_scale(prev: nn.Module, linears: list[nn.Linear], s: torch.Tensor) -> None:
    """``prev``'s output divided by ``s``, the linears' input columns multiplied by ``s``: the float
    function is unchanged."""
    if isinstance(prev, nn.Linear):
        prev.weight.div_(s[:, None].to(prev.weight.dtype))
        if prev.bias is not None:
            prev.bias.div_(s.to(prev.bias.dtype))
    else:  # an RMSNorm-like module with a per-channel weight
        prev.weight.div_(s.to(prev.weight.dtype))
    for lin in linears:
        lin.weight.mul_(s[None, :].to(lin.weight.dtype))


def can_fold(prev: nn.Module, linears: list[nn.Linear]) -> bool:
    width = linears[0].in_features
    if isinstance(prev, nn.Linear):
        return prev.out_features == width  # grouped-query attention: v_proj narrower than o_proj's input
    w = getattr(prev, "weight", None)
    return w is not None and w.dim() == 1 and w.numel() == width


@torch.inference_mode()
def search_clip(w: torch.Tensor, x: torch.Tensor, scheme: QuantScheme, cfg: AWQConfig) -> torch.Tensor:
    """Per-group shrink of the weight range that minimises each group's output error on inputs ``x``
    [n, in]; returns the clipped float weight."""
    out_f, in_f = w.shape
    g = scheme.group_width(in_f)
    n_groups = in_f // g
    xg = x.float().reshape(-1, n_groups, g)  # [n, G, g]
    wg = w.float().reshape(out_f, n_groups, g)  # [o, G, g]
    best_shrink = torch.ones(out_f, n_groups)
    best_err = torch.full((out_f, n_groups), float("inf"))
    ref = torch.einsum("ngk,ogk->ogn", xg, wg)  # each group's contribution to each output
    for i in range(int(cfg.max_shrink * cfg.clip_grid) + 1):
        shrink = 1.0 - i / cfg.clip_grid
        flat = wg.reshape(-1, g)
        q = fake_quantize(flat, group_params(flat, scheme, shrink=shrink), scheme).reshape(out_f, n_groups, g)
        err = (torch.einsum("ngk,ogk->ogn", xg, q) - ref).pow(2).mean(dim=-1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_shrink = torch.where(better, torch.full_like(best_shrink, shrink), best_shrink)
    if scheme.symmetric:
        m = wg.abs().amax(dim=-1) * best_shrink
        clipped = torch.maximum(torch.minimum(wg, m[..., None]), -m[..., None])
    else:
        lo = wg.amin(dim=-1) * best_shrink
        hi = wg.amax(dim=-1) * best_shrink
        clipped = torch.maximum(torch.minimum(wg, hi[..., None]), lo[..., None])
    return clipped.reshape(out_f, in_f).to(w.dtype)
