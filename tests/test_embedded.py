"""The embedded default model: committed, really trained, and the model GPTQ's claim is shown on."""
from __future__ import annotations

import json
import math
from collections import Counter

import pytest

from edgequant.compress.quantize import quantize
from edgequant.compress.scheme import QuantScheme
from edgequant.eval.evaluate import evaluate
from edgequant.models.loading import EMBEDDED_MODEL, load_model

HELDOUT = "builtin:shakespeare-heldout"


def unigram_ppl(tok, train: str, test: str, max_tokens: int) -> float:
    """Perplexity of add-one smoothed unigram frequencies of the training text on the first test tokens."""
    counts = Counter(tok(train)["input_ids"])
    total, v = sum(counts.values()), len(tok)
    ids = tok(test)["input_ids"][:max_tokens]
    return math.exp(-sum(math.log((counts[i] + 1) / (total + v)) for i in ids) / len(ids))


def test_embedded_model_is_a_small_llama_in_safetensors(embedded_path):
    assert (embedded_path / "model.safetensors").is_file() and not list(embedded_path.glob("*.bin"))
    m = load_model("embedded")
    n = sum(p.numel() for p in m.model.parameters())
    assert m.model.config.model_type == "llama" and 2e6 < n < 2e7
    assert (embedded_path / "model.safetensors").stat().st_size < 20 * 2**20
    info = json.loads((embedded_path / "TRAINING.json").read_text())
    assert info["script"] == "scripts/train_embedded.py"


def test_embedded_model_has_learned_far_beyond_unigram(embedded_path):
    m = load_model("embedded")
    text = (embedded_path.parent / "text" / "shakespeare_heldout.txt").read_text(encoding="utf-8")
    train = (embedded_path.parent / "text" / "shakespeare_train.txt").read_text(encoding="utf-8")
    res, _ = evaluate("embedded", HELDOUT, seq_len=256, max_tokens=8192, progress=False)
    uni = unigram_ppl(m.tokenizer, train, text, 8192)
    assert res.ppl < 0.5 * uni, (res.ppl, uni)


def test_gptq_beats_rtn_at_3_bits_group_128(tmp_path):
    """Issue 2's first claim, on a cut of the demo's settings: GPTQ int3 g128 perplexity clearly below RTN's."""
    scheme = QuantScheme(3, 128, True)
    ppl = {}
    for method in ("rtn", "gptq"):
        quantize(EMBEDDED_MODEL, tmp_path / method, method=method, scheme=scheme, calib="builtin:shakespeare", samples=32, seq_len=256, progress=False)
        res, _ = evaluate(tmp_path / method, HELDOUT, ref=EMBEDDED_MODEL, seq_len=256, max_tokens=4096, progress=False)
        ppl[method] = (res.ppl, res.kl)
    assert ppl["gptq"][0] < 0.97 * ppl["rtn"][0] and ppl["gptq"][1] < ppl["rtn"][1], ppl
