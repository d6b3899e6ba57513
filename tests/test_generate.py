"""The generation loop's thinking control, on the embedded model through the reference runtime.

A small model rarely thinks on its own, so a wrapper runtime adds a bias to the logits of the think
markers: the model then wants to open a think block, or to keep thinking, and the loop must still keep
the budget and the off switch.
"""
from __future__ import annotations

import pytest
import torch

from edgequant.calibration.chat import THINK_CLOSE, THINK_OPEN
from edgequant.eval.generate import generate
from edgequant.models.loading import EMBEDDED_MODEL
from edgequant.targets.runtime import LLMRuntime
from edgequant.targets.torch_runtime import TorchRuntime


class Biased(LLMRuntime):
    """A real runtime whose logits get ``bias`` added at the given token ids."""

    def __init__(self, inner: LLMRuntime, bias: dict[int, float]) -> None:
        self.inner, self.bias, self.meta = inner, bias, inner.meta

    def reset(self) -> None:
        self.inner.reset()

    def forward(self, tokens: torch.Tensor, start_pos: int) -> torch.Tensor:
        out = self.inner.forward(tokens, start_pos).clone()
        for i, b in self.bias.items():
            out[..., i] += b
        return out


@pytest.fixture(scope="module")
def rt_tok():
    rt = TorchRuntime(EMBEDDED_MODEL, max_seq_len=256)
    from transformers import AutoTokenizer

    return rt, AutoTokenizer.from_pretrained(EMBEDDED_MODEL)


def ids_of(tok, text):
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == 1, f"{text} is not one token in the embedded tokenizer"
    return ids[0]


@pytest.mark.parametrize("budget", [0, 3, 10])
def test_thinking_never_exceeds_the_budget_and_the_answer_follows_the_marker(rt_tok, budget):
    rt, tok = rt_tok
    # the model is pushed never to close its thoughts: only the budget can end them
    keep_thinking = Biased(rt, {ids_of(tok, THINK_CLOSE): -1e4, tok.eos_token_id: -1e4})
    r = generate(keep_thinking, tok, "What is the king's name?", max_new_tokens=budget + 12, think="on", think_budget=budget, seed=0)
    assert r.thinking_tokens == budget and r.forced_think_end
    assert r.new_tokens > budget + 2  # the marker was inserted and the model went on to answer
    # the text holds the inserted marker once, and after it the answer
    assert r.text.count(THINK_CLOSE) == 1 and r.answer.strip() and r.text.rstrip().endswith(r.answer.strip())


def test_without_a_budget_thinking_runs_on(rt_tok):
    rt, tok = rt_tok
    keep_thinking = Biased(rt, {ids_of(tok, THINK_CLOSE): -1e4, tok.eos_token_id: -1e4})
    r = generate(keep_thinking, tok, "What is the king's name?", max_new_tokens=20, think="on", seed=0)
    assert r.thinking_tokens == 20 and not r.forced_think_end and r.answer == ""


def test_think_off_produces_no_thinking_block_even_when_the_model_wants_one(rt_tok):
    rt, tok = rt_tok
    wants_to_think = Biased(rt, {ids_of(tok, THINK_OPEN): 50.0})
    r = generate(wants_to_think, tok, "What is the king's name?", max_new_tokens=16, think="off", seed=0)
    assert r.thinking_tokens == 0 and r.thinking == "" and THINK_OPEN not in r.text
    # the same bias with thinking on does open a block: the wrapper really pushes the model
    on = generate(wants_to_think, tok, "What is the king's name?", max_new_tokens=16, think="on", seed=0)
    assert on.thinking_tokens > 0
