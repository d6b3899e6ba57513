"""``evaluate()``: perplexity of a model on a text, and its agreement with a reference model."""
from __future__ import annotations

import time

import torch

from edgequant.calibration.sampling import tokenize_source
from edgequant.eval.chat_eval import chat_windows, is_chat_jsonl
from edgequant.calibration.sources import read_sources
from edgequant.errors import CalibrationError, EdgequantError
from edgequant.eval.metrics import EvalResult, LogitsFn, eval_windows, evaluate_windows, hf_logits_fn


def text_windows(tokenizer, text, seq_len: int, max_tokens: int | None) -> list[torch.Tensor]:
    sources = read_sources(text, tokenizer)
    ids = torch.cat([tokenize_source(tokenizer, s) for s in sources])
    windows = eval_windows(ids, seq_len, max_tokens)
    if not windows:
        raise CalibrationError(f"{text} gives fewer than 2 tokens; nothing to score")
    return windows


def evaluate_logits(
    tokenizer, text, logits_fn: LogitsFn, ref_fn: LogitsFn | None = None, seq_len: int = 512, max_tokens: int | None = None, progress: bool = False
) -> EvalResult:
    windows = text_windows(tokenizer, text, seq_len, max_tokens)
    return evaluate_windows(windows, logits_fn, ref_fn, progress=progress)["all"]


def check_same_vocab(a, b) -> None:
    va, vb = len(a.tokenizer), len(b.tokenizer)
    if va != vb:
        raise EdgequantError(f"the reference has a vocabulary of {vb} tokens and the model {va}: they cannot be compared")


def evaluate(
    model, text, ref=None, seq_len: int = 512, max_tokens: int | None = None, progress: bool = True, think_mix: float | None = None
) -> tuple[EvalResult, float]:
    """Evaluate ``model`` (a checkpoint path, quantized or float) on ``text``; with ``ref`` also KL and
    top-1 against the reference. Returns the result and the seconds taken. On chat JSONL the result has
    ``.parts``: the same metrics for the reasoning tokens and for the answer tokens."""
    from edgequant.models.loading import load_model

    t0 = time.time()
    if seq_len < 2:
        raise EdgequantError("--seq-len must be at least 2")
    m = load_model(model)
    r = load_model(ref) if ref is not None else None
    if r is not None:
        check_same_vocab(m, r)
    ref_fn = hf_logits_fn(r.model) if r else None
    if is_chat_jsonl(text):
        cw = chat_windows(m.tokenizer, text, seq_len, think_mix=think_mix)
        res = evaluate_windows(cw.windows, hf_logits_fn(m.model), ref_fn, masks=cw.masks, progress=progress)
        result = res["all"]
        result.parts = {"think": res["think"].to_dict(), "answer": res["answer"].to_dict(), "records": cw.records, "thinking_records": cw.thinking_records}
    else:
        result = evaluate_logits(m.tokenizer, text, hf_logits_fn(m.model), ref_fn, seq_len, max_tokens, progress)
    return result, time.time() - t0
