import math

import torch

from edgequant.eval.metrics import eval_windows, evaluate_windows


def test_every_token_after_the_first_is_scored_once():
    ids = torch.arange(1000)
    windows = eval_windows(ids, 64)
    targets = torch.cat([w[1:] for w in windows])
    assert torch.equal(targets, ids[1:])
    assert all(w.numel() <= 64 for w in windows)
    capped = eval_windows(ids, 64, max_tokens=100)
    assert sum(w.numel() - 1 for w in capped) == 100


def _uniform(vocab):
    return lambda ids: torch.zeros(ids.numel(), vocab)


def test_uniform_model_has_vocabulary_perplexity_and_zero_kl_against_itself():
    windows = eval_windows(torch.randint(0, 50, (300,), generator=torch.Generator().manual_seed(0)), 32)
    r = evaluate_windows(windows, _uniform(50), _uniform(50))["all"]
    assert math.isclose(r.ppl, 50, rel_tol=1e-5) and r.tokens == 299
    assert r.kl == 0 and r.top1 == 1.0 and math.isclose(r.ref_ppl, 50, rel_tol=1e-5)


def test_kl_and_top1_against_a_different_model():
    vocab = 10
    windows = eval_windows(torch.randint(0, vocab, (200,), generator=torch.Generator().manual_seed(1)), 20)

    def peaked(ids):
        logits = torch.zeros(ids.numel(), vocab)
        logits[:, 3] = 5.0
        return logits

    r = evaluate_windows(windows, _uniform(vocab), peaked)["all"]
    p = torch.softmax(peaked(torch.zeros(1))[0], -1)
    expected_kl = float((p * (p.log() - math.log(1 / vocab))).sum())
    assert math.isclose(r.kl, expected_kl, rel_tol=1e-4)
    assert r.top1 < 0.2  # uniform's argmax is token 0, the reference's is 3


def test_masks_split_the_metrics():
    windows = eval_windows(torch.arange(101) % 7, 101)
    mask = [torch.arange(100) < 40]
    res = evaluate_windows(windows, _uniform(7), masks={"first": mask})
    assert res["first"].tokens == 40 and res["all"].tokens == 100


def test_chat_windows_split_reasoning_and_answer(embedded_path, tmp_path):
    import json

    from transformers import AutoTokenizer

    from edgequant.eval.chat_eval import chat_windows

    tok = AutoTokenizer.from_pretrained(embedded_path)
    rec = {"messages": [{"role": "user", "content": "Count the crowns."}, {"role": "assistant", "content": "There are three crowns.", "reasoning": "One for Duncan, one for Malcolm, one for Macbeth."}]}
    p = tmp_path / "c.jsonl"
    p.write_text(json.dumps(rec) + "\n")
    cw = chat_windows(tok, p, 512)
    w, think, answer = cw.windows[0], cw.masks["think"][0], cw.masks["answer"][0]
    targets = w[1:]
    assert tok.decode(targets[think]).strip() == "One for Duncan, one for Malcolm, one for Macbeth."
    assert tok.decode(targets[answer]).strip() == "There are three crowns."
    assert not (think & answer).any()
    off = chat_windows(tok, p, 512, think_mix=0.0)
    assert off.thinking_records == 0 and not off.masks["think"][0].any()
    assert "Duncan" not in tok.decode(off.windows[0])


def test_builtin_reasoning_set_evaluates_in_parts(tiny_llama):
    from edgequant.eval.evaluate import evaluate

    r, _ = evaluate(tiny_llama, "builtin:reasoning", ref=tiny_llama, seq_len=256, progress=False)
    assert r.parts["records"] == 120 and r.parts["thinking_records"] == 120
    assert r.parts["think"]["tokens"] > r.parts["answer"]["tokens"] > 0
    assert r.parts["think"]["kl"] == 0 and r.parts["answer"]["top1"] == 1.0
