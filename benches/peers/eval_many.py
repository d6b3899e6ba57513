"""edgequant's evaluation of several models against one reference, computing the reference's logits once.

``edgequant eval X --ref R`` runs R again for every X; on a 2-core machine that doubles a comparison's cost. This
calls the same functions the CLI calls (edgequant.eval.evaluate.text_windows, edgequant.eval.metrics.
evaluate_windows, hf_logits_fn) with the reference's logits kept from the first pass, so the numbers are those the
CLI prints for each model.

    PYTHONPATH=$PWD python benches/peers/eval_many.py REF MODEL [MODEL ...] [--text builtin:britannica] [--max-tokens 8192]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def eval_many(ref: str, models: list[str], text: str = "builtin:britannica", max_tokens: int | None = 8192, seq_len: int = 512,
              progress: bool = False) -> dict[str, dict]:
    import torch

    from edgequant.eval.evaluate import check_same_vocab, text_windows
    from edgequant.eval.metrics import evaluate_windows, hf_logits_fn
    from edgequant.models.loading import load_model

    t0 = time.time()
    r = load_model(ref)
    windows = text_windows(r.tokenizer, text, seq_len, max_tokens)
    ref_fn = hf_logits_fn(r.model)
    with torch.inference_mode():
        ref_logits = [ref_fn(w) for w in windows]
    t_ref = time.time() - t0
    del ref_fn
    r_tok = r.tokenizer
    del r
    out = {}
    for m_path in models:
        t = time.time()
        m = load_model(m_path)
        check_same_vocab(m, type("R", (), {"tokenizer": r_tok})())
        mw = text_windows(m.tokenizer, text, seq_len, max_tokens)
        if len(mw) != len(windows) or any(not torch.equal(a, b) for a, b in zip(mw, windows)):
            raise SystemExit(f"{m_path}: its tokenizer gives other token windows than the reference's")
        cached = iter(ref_logits)
        res = evaluate_windows(windows, hf_logits_fn(m.model), lambda w: next(cached), progress=progress)["all"]
        out[m_path] = {"model": m_path, "ref": ref, "text": text, **res.to_dict(), "seconds": round(time.time() - t, 2),
                       "ref_seconds": round(t_ref, 2)}
        del m
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ref")
    ap.add_argument("models", nargs="+")
    ap.add_argument("--text", default="builtin:britannica")
    ap.add_argument("--max-tokens", type=int, default=8192)
    ap.add_argument("--seq-len", type=int, default=512)
    a = ap.parse_args()
    print(json.dumps(eval_many(a.ref, a.models, a.text, a.max_tokens, a.seq_len), indent=1))


if __name__ == "__main__":
    main()
