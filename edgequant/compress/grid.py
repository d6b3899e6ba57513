"""The integer grid: per-group scales and zero points, rounding to codes, and back.

Scales are rounded before any code is chosen to values that float16 *and* bfloat16 both hold exactly
(8 significant bits, within float16's normal range), so the stored float16 scale is exactly the scale
the codes were computed against, and every runtime holds the same numbers: float32 (ONNX Runtime),
float16 (Core ML) and bfloat16 (XNNPACK's int4 kernels keep their scales in bfloat16).
``(code - zero) * scale`` is exact in float32.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from edgequant.compress.scheme import QuantScheme

_SCALE_MIN = float(torch.finfo(torch.float16).tiny)  # smallest normal float16, 2**-14
_SCALE_MAX = 65280.0  # largest bfloat16 value that float16 holds


@dataclass
class GroupParams:
    """Scale and zero point of one or more groups; shapes broadcast against the weight columns."""

    scale: torch.Tensor  # float32 holding float16-exact values
    zero: torch.Tensor  # float32 holding integers


def exact_scale(scale: torch.Tensor) -> torch.Tensor:
    """Round scales to the nearest value exact in both float16 and bfloat16 (as float32)."""
    return scale.clamp(min=_SCALE_MIN, max=_SCALE_MAX).to(torch.bfloat16).to(torch.float32)


def group_params(w: torch.Tensor, scheme: QuantScheme, shrink: torch.Tensor | float = 1.0) -> GroupParams:
    """Min-max grid of ``w`` ([rows, cols] = one group per row) for ``scheme``.

    ``shrink`` (<= 1) narrows the range before the grid is laid, as a clipping search does.
    Returns scale and zero of shape [rows, 1].
    """
    w = w.float()
    maxq = scheme.maxq
    if scheme.symmetric:
        absmax = w.abs().amax(dim=1, keepdim=True) * shrink
        # the GPTQ / llm-compressor convention: codes -2^(b-1) .. 2^(b-1)-1 span [-absmax, absmax]
        scale = exact_scale(2.0 * absmax / maxq)
        zero = torch.full_like(scale, float(scheme.implicit_zero))
    else:
        wmin = w.amin(dim=1, keepdim=True) * shrink
        wmax = w.amax(dim=1, keepdim=True) * shrink
        wmin = torch.minimum(wmin, torch.zeros_like(wmin))
        wmax = torch.maximum(wmax, torch.zeros_like(wmax))
        scale = exact_scale((wmax - wmin) / maxq)
        zero = torch.round(-wmin / scale).clamp(0, maxq)
    return GroupParams(scale=scale, zero=zero)


def quantize_codes(w: torch.Tensor, params: GroupParams, scheme: QuantScheme) -> torch.Tensor:
    """Codes (as float32 integers) of ``w`` on the grid ``params``."""
    return torch.clamp(torch.round(w / params.scale) + params.zero, 0, scheme.maxq)


def dequantize_codes(codes: torch.Tensor, params: GroupParams) -> torch.Tensor:
    return (codes - params.zero) * params.scale


def fake_quantize(w: torch.Tensor, params: GroupParams, scheme: QuantScheme) -> torch.Tensor:
    return dequantize_codes(quantize_codes(w, params, scheme), params)


def mse_group_params(
    w: torch.Tensor, scheme: QuantScheme, grid: int = 20, max_shrink: float = 0.2, norm: float = 2.4
) -> GroupParams:
    """Per-group search over narrowed ranges (1.0 down to 1 - max_shrink), keeping the one with the
    lowest |w - q|^norm error, as GPTQ's ``mse`` option and AWQ's clip search do."""
    w = w.float()
    best = group_params(w, scheme)
    best_err = (fake_quantize(w, best, scheme) - w).abs().pow(norm).sum(dim=1, keepdim=True)
    for i in range(1, int(max_shrink * grid) + 1):
        p = group_params(w, scheme, shrink=1.0 - i / grid)
        err = (fake_quantize(w, p, scheme) - w).abs().pow(norm).sum(dim=1, keepdim=True)
        better = err < best_err
        if better.any():
            best_err = torch.where(better, err, best_err)
            best = GroupParams(scale=torch.where(better, p.scale, best.scale), zero=torch.where(better, p.zero, best.zero))
    return best


def quantize_weight(
    w: torch.Tensor, scheme: QuantScheme, mse: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Round-to-nearest of a whole weight [out, in]: codes uint8 [out, in], scales float16 [out, G],
    zeros uint8 [out, G]."""
    out_f, in_f = w.shape
    g = scheme.group_width(in_f)
    groups = w.float().reshape(out_f * (in_f // g), g)
    params = mse_group_params(groups, scheme) if mse else group_params(groups, scheme)
    codes = quantize_codes(groups, params, scheme).reshape(out_f, in_f)
    scales = params.scale.reshape(out_f, in_f // g)
    zeros = params.zero.reshape(out_f, in_f // g)
    return codes.to(torch.uint8), scales.to(torch.float16), zeros.to(torch.uint8)


def dequantize_weight(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor) -> torch.Tensor:
    """Float32 weight [out, in] from codes [out, in], scales [out, G] and zeros [out, G]."""
    out_f, in_f = codes.shape
    n_groups = scales.shape[1]
    g = in_f // n_groups
    c = codes.to(torch.float32).reshape(out_f, n_groups, g)
    w = (c - zeros.to(torch.float32)[..., None]) * scales.to(torch.float32)[..., None]
    return w.reshape(out_f, in_f)


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack unsigned codes [rows, n] into a little-endian bit stream per row: uint8 [rows, ceil(n*bits/8)].

    For 4 bits this is two codes per byte, the first in the low nibble (the layout of ONNX Runtime's
    MatMulNBits and of GGUF); for 8 bits it is the codes themselves.
    """
    if bits == 8:
        return codes.to(torch.uint8).contiguous()
    rows, n = codes.shape
    c = codes.to(torch.int32)
    shifts = torch.arange(bits, dtype=torch.int32)
    bitplanes = ((c[..., None] >> shifts) & 1).reshape(rows, n * bits)
    pad = (-bitplanes.shape[1]) % 8
    if pad:
        bitplanes = torch.nn.functional.pad(bitplanes, (0, pad))
    weights = (1 << torch.arange(8, dtype=torch.int32))
    packed = (bitplanes.reshape(rows, -1, 8) * weights).sum(dim=-1)
    return packed.to(torch.uint8).contiguous()


def unpack_codes(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: uint8 codes [rows, n]."""
    if bits == 8:
        return packed[:, :n].to(torch.uint8).contiguous()
    rows = packed.shape[0]
    p = packed.to(torch.int32)
    bitplanes = ((p[..., None] >> torch.arange(8, dtype=torch.int32)) & 1).reshape(rows, -1)[:, : n * bits]
    weights = (1 << torch.arange(bits, dtype=torch.int32))
    codes = (bitplanes.reshape(rows, n, bits) * weights).sum(dim=-1)
    return codes.to(torch.uint8).contiguous()
