"""GPTQ (Frantar et al., 2023): quantize a linear layer's weights column by column, pushing each
column's rounding error onto the columns not yet quantized through the inverse Hessian of the layer's
inputs, so that the layer's *output* on calibration inputs changes as little as possible.

The solve follows the paper: Hessian ``H = 2 X X^T / n`` from calibration inputs, dampening of its
diagonal, the upper Cholesky factor of ``H^-1``, and lazy block updates. With ``act_order`` the columns
are taken in decreasing order of ``diag(H)``, with group parameters fixed beforehand from the unquantized
weights (static groups), so the stored layout stays in natural column order.
"""
from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass

import torch

from edgequant.compress.grid import GroupParams, dequantize_codes, group_params, mse_group_params, quantize_codes
from edgequant.compress.scheme import QuantScheme


@dataclass(frozen=True)
class GPTQConfig:
    damp: float = 0.01  # fraction of the mean Hessian diagonal added to it
    block_size: int = 128  # columns per lazy-update block
    act_order: bool = True  # measured better end to end on SmolLM2 out of domain (benches/RESULTS.md)
    static_groups: bool = False  # implied by act_order
    mse: bool = False  # choose each group's range by an error search instead of min-max

    def to_dict(self) -> dict:
        return asdict(self)


def _params(w: torch.Tensor, scheme: QuantScheme, mse: bool) -> GroupParams:
    return mse_group_params(w, scheme) if mse else group_params(w, scheme)


def output_error(w: torch.Tensor, q: torch.Tensor, h: torch.Tensor) -> float:
    """Relative output error ``||(W - Q) X||^2 / ||W X||^2`` through the Hessian ``H ~ X X^T``."""
    h = h.double()
    d = (w - q).double()
    num = ((d @ h) * d).sum()
    den = ((w.double() @ h) * w.double()).sum()
    return float(num / den.clamp(min=1e-30))


def inverse_hessian_factor(h: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of ``(H + damp * mean(diag H) * I)^-1``, in float64 for safety."""
    h = h.double().clone()
    n = h.shape[0]
    diag = torch.arange(n, device=h.device)
    mean = h[diag, diag].mean().clamp(min=1e-12)
    for attempt in range(6):
        try:
            hd = h.clone()
            hd[diag, diag] += damp * (10**attempt) * mean
            lower = torch.linalg.cholesky(hd)
            hinv = torch.cholesky_inverse(lower)
            return torch.linalg.cholesky(hinv, upper=True)
        except torch.linalg.LinAlgError:
            continue
    raise RuntimeError("Hessian is not positive definite even with heavy dampening")


@contextlib.contextmanager
def single_threaded():
    """The solve is a long chain of small operations and LAPACK calls: one thread avoids the OpenMP
    hand-offs that make it many times slower on a busy 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def gptq_quantize(
    w: torch.Tensor, h: torch.Tensor, scheme: QuantScheme, cfg: GPTQConfig = GPTQConfig()
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize ``w`` [out, in] against the Hessian ``h`` [in, in].

    Returns codes uint8 [out, in], scales float16 [out, G] and zeros uint8 [out, G], in natural column order.
    """
    if w.device.type == "cpu":
        with single_threaded():
            return _gptq_quantize(w, h, scheme, cfg)
    return _gptq_quantize(w, h, scheme, cfg)


def _gptq_quantize(w: torch.Tensor, h: torch.Tensor, scheme: QuantScheme, cfg: GPTQConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    w = w.detach().float().clone()
    out_f, in_f = w.shape
    g = scheme.group_width(in_f)
    n_groups = in_f // g
    h = h.detach().float().clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0  # columns never excited: no error to push, they are simply rounded

    static = cfg.static_groups or cfg.act_order or n_groups == 1
    dev = w.device
    scales = torch.empty(out_f, n_groups, device=dev)
    zeros = torch.empty(out_f, n_groups, device=dev)
    if static:
        for gi in range(n_groups):
            p = _params(w[:, gi * g : (gi + 1) * g], scheme, cfg.mse)
            scales[:, gi], zeros[:, gi] = p.scale[:, 0], p.zero[:, 0]

    # stable: equal diagonals (e.g. columns never excited) keep their natural order, so runs are reproducible
    perm = torch.argsort(torch.diag(h), descending=True, stable=True) if cfg.act_order else torch.arange(in_f, device=dev)
    w = w[:, perm]
    h = h[perm][:, perm]
    hinv = inverse_hessian_factor(h, cfg.damp).float()
    perm_list = perm.tolist()

    codes = torch.zeros(out_f, in_f, device=dev)
    bs = cfg.block_size if g == in_f or cfg.block_size % g == 0 else g
    for i1 in range(0, in_f, bs):
        i2 = min(i1 + bs, in_f)
        w1 = w[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            gi = perm_list[col] // g
            if not static and col % g == 0:
                # group starts here; in natural order the whole group lies inside this block
                p = _params(w1[:, i : i + g], scheme, cfg.mse)
                scales[:, gi], zeros[:, gi] = p.scale[:, 0], p.zero[:, 0]
            params = GroupParams(scale=scales[:, gi], zero=zeros[:, gi])
            x = w1[:, i]
            c = quantize_codes(x, params, scheme)
            codes[:, col] = c
            q = dequantize_codes(c, params)
            e = (x - q) / hinv1[i, i]
            w1[:, i:] -= e[:, None] * hinv1[i, i:][None, :]
            err1[:, i] = e
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]

    inv = torch.argsort(perm)
    codes = codes[:, inv]
    return codes.to(torch.uint8).cpu(), scales.to(torch.float16).cpu(), zeros.to(torch.uint8).cpu()
