"""``check()``: an artifact, teacher-forced through its own runtime, against a reference model."""
from __future__ import annotations

import time
from pathlib import Path

import torch

from edgequant.errors import EdgequantError
from edgequant.eval.evaluate import text_windows
from edgequant.eval.metrics import EvalResult, evaluate_windows, hf_logits_fn
from edgequant.targets.registry import open_runtime
from edgequant.targets.runtime import LLMRuntime, load_artifact_tokenizer


def runtime_logits_fn(runtime: LLMRuntime):
    def fn(ids: torch.Tensor) -> torch.Tensor:
        runtime.reset()
        return runtime.prefill(ids, 0)

    return fn


def check(
    artifact: str | Path,
    ref: str | Path,
    text,
    seq_len: int = 512,
    max_tokens: int | None = None,
    tokenizer: str | Path | None = None,
    progress: bool = False,
    **runtime_options,
) -> tuple[EvalResult, dict]:
    """Perplexity of the artifact on ``text`` and its KL / top-1 against ``ref`` (float or quantized)."""
    from edgequant.models.loading import load_model

    t0 = time.time()
    runtime = open_runtime(Path(artifact), **runtime_options)
    tok = load_artifact_tokenizer(Path(artifact), tokenizer)
    reference = load_model(ref)
    if len(tok) != len(reference.tokenizer):
        raise EdgequantError(f"the reference has a vocabulary of {len(reference.tokenizer)} tokens and the artifact {len(tok)}: they cannot be compared")
    seq_len = min(seq_len, runtime.meta.max_seq_len)
    windows = text_windows(tok, text, seq_len, max_tokens)
    result = evaluate_windows(windows, runtime_logits_fn(runtime), hf_logits_fn(reference.model), progress=progress)["all"]
    runtime.close()
    return result, {"target": runtime.meta.target, "seq_len": seq_len, "seconds": round(time.time() - t0, 2)}
