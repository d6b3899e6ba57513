"""Perplexity, and agreement with a reference model as llama.cpp's llama-perplexity --kl-divergence
reports it: mean KL divergence of the next-token distributions KL(reference || model), and how often
both models put the same token on top."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable

import torch

LogitsFn = Callable[[torch.Tensor], torch.Tensor]  # token ids [L] -> logits [L, vocab]


def eval_windows(ids: torch.Tensor, seq_len: int, max_tokens: int | None = None) -> list[torch.Tensor]:
    """Fixed windows of ``seq_len`` tokens that score every token after the first exactly once.

    Window k starts where window k-1 ended (they share one token, the context of the first scored token),
    so ``n`` tokens give ``n - 1`` scored predictions. ``max_tokens`` caps the scored count.
    """
    if max_tokens is not None:
        ids = ids[: max_tokens + 1]
    step = seq_len - 1
    return [ids[s : s + seq_len] for s in range(0, max(1, ids.numel() - 1), step) if ids[s : s + seq_len].numel() >= 2]


@dataclass
class EvalResult:
    ppl: float
    tokens: int
    ref_ppl: float | None = None
    kl: float | None = None
    kl_median: float | None = None
    kl_p99: float | None = None
    top1: float | None = None
    ln_ppl_ratio: float | None = None
    parts: dict | None = None  # per-part results (e.g. reasoning vs answer tokens of chat text)

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


class _Accumulator:
    def __init__(self) -> None:
        self.nll = 0.0
        self.ref_nll = 0.0
        self.n = 0
        self.same = 0
        self.kls: list[torch.Tensor] = []

    def result(self, with_ref: bool) -> EvalResult:
        if self.n == 0:
            return EvalResult(ppl=float("nan"), tokens=0)
        r = EvalResult(ppl=math.exp(self.nll / self.n), tokens=self.n)
        if with_ref:
            kl = torch.cat(self.kls)
            r.ref_ppl = math.exp(self.ref_nll / self.n)
            r.kl = float(kl.mean())
            r.kl_median = float(kl.median())
            r.kl_p99 = float(torch.quantile(kl.double(), 0.99))
            r.top1 = self.same / self.n
            r.ln_ppl_ratio = (self.nll - self.ref_nll) / self.n
        return r


@torch.inference_mode()
def evaluate_windows(
    windows: list[torch.Tensor],
    logits_fn: LogitsFn,
    ref_fn: LogitsFn | None = None,
    masks: dict[str, list[torch.Tensor]] | None = None,
    progress: bool = False,
) -> dict[str, EvalResult]:
    """Score each window's next-token predictions. Returns ``{"all": ...}`` plus one result per mask
    (masks select which target positions of each window count: mask[k][j] scores token j+1)."""
    from tqdm.auto import tqdm

    acc = {"all": _Accumulator()}
    for name in masks or {}:
        acc[name] = _Accumulator()
    for k, w in enumerate(tqdm(windows, desc="eval", disable=not progress, unit="window")):
        targets = w[1:]
        logp = torch.log_softmax(logits_fn(w)[:-1].float(), dim=-1)
        nll = -logp.gather(1, targets[:, None])[:, 0]
        if ref_fn is not None:
            ref_logp = torch.log_softmax(ref_fn(w)[:-1].float(), dim=-1)
            ref_nll = -ref_logp.gather(1, targets[:, None])[:, 0]
            kl = (ref_logp.exp() * (ref_logp - logp)).sum(dim=-1).clamp(min=0)
            same = logp.argmax(-1) == ref_logp.argmax(-1)
        selections = {"all": torch.ones_like(targets, dtype=torch.bool)}
        for name, m in (masks or {}).items():
            selections[name] = m[k][: targets.numel()].bool()
        for name, sel in selections.items():
            a = acc[name]
            a.nll += float(nll[sel].double().sum())
            a.n += int(sel.sum())
            if ref_fn is not None:
                a.ref_nll += float(ref_nll[sel].double().sum())
                a.kls.append(kl[sel])
                a.same += int(same[sel].sum())
    return {name: a.result(ref_fn is not None) for name, a in acc.items()}


def hf_logits_fn(model) -> LogitsFn:
    """Logits of a transformers causal LM for one window."""
    device = next(model.parameters()).device

    def fn(ids: torch.Tensor) -> torch.Tensor:
        return model(input_ids=ids[None].to(device), use_cache=False).logits[0].float().cpu()

    return fn
