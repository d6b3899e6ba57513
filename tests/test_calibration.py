import json

import pytest
import torch

from edgequant.calibration.chat import DEFAULT_TEMPLATE, parse_messages, render
from edgequant.calibration.sampling import calibration_windows, sample_windows, split_counts
from edgequant.calibration.sources import read_sources
from edgequant.errors import CalibrationError, InputError


@pytest.fixture(scope="module")
def tokenizer(embedded_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedded_path)


def test_windows_are_reproducible_and_spread_over_sources():
    a = torch.arange(1000)
    b = torch.arange(1000, 1500)
    w1 = sample_windows([a, b], ["a", "b"], 6, 50, seed=3)
    w2 = sample_windows([a, b], ["a", "b"], 6, 50, seed=3)
    w3 = sample_windows([a, b], ["a", "b"], 6, 50, seed=4)
    assert torch.equal(w1, w2) and not torch.equal(w1, w3)
    assert w1.shape == (6, 50)
    assert (w1[:3] < 1000).all() and (w1[3:] >= 1000).all()
    # windows are contiguous, aligned and distinct
    assert all(int(w[0]) % 50 == 0 and torch.equal(w, torch.arange(int(w[0]), int(w[0]) + 50)) for w in w1)
    assert len({int(w[0]) for w in w1}) == 6
    assert split_counts(7, 3) == [3, 2, 2]


def test_too_little_text_is_a_clear_error():
    with pytest.raises(CalibrationError, match="too short.*add text or lower --samples"):
        sample_windows([torch.arange(100)], ["tiny.txt"], 4, 50, seed=0)


def test_text_jsonl_and_builtin_sources(tmp_path, tokenizer):
    (tmp_path / "a.txt").write_text("To be, or not to be, that is the question.")
    rows = [{"text": "Once more unto the breach."}, {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}]
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    src = read_sources([tmp_path / "a.txt", tmp_path / "b.jsonl"], tokenizer)
    assert [len(s.documents) for s in src] == [1, 2]
    assert "<|assistant|>" in src[1].documents[1] and "Hello." in src[1].documents[1]
    mix = read_sources("builtin:mix", tokenizer)
    assert [s.name for s in mix] == ["builtin:shakespeare", "builtin:milton", "builtin:pydoc"]
    w = calibration_windows(tokenizer, mix, 6, 64, seed=0)
    assert w.shape == (6, 64)


def test_bad_sources(tmp_path, tokenizer):
    with pytest.raises(InputError, match="not found"):
        read_sources(tmp_path / "missing.txt", tokenizer)
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{oops\n')
    with pytest.raises(InputError, match="bad.jsonl:2"):
        read_sources(tmp_path / "bad.jsonl", tokenizer)
    (tmp_path / "empty.txt").write_text("   \n")
    with pytest.raises(CalibrationError, match="no text"):
        read_sources(tmp_path / "empty.txt", tokenizer)
    with pytest.raises(InputError, match="unknown built-in"):
        read_sources("builtin:nope", tokenizer)


def test_reasoning_is_parsed_from_think_blocks_and_fields():
    turns = parse_messages(
        [
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "<think>two and two</think>\n4"},
            {"role": "assistant", "content": "5", "reasoning": "count"},
        ]
    )
    assert (turns[1].reasoning, turns[1].content) == ("two and two", "4")
    assert (turns[2].reasoning, turns[2].content) == ("count", "5")


def test_think_and_no_think_rendering(tokenizer):
    turns = parse_messages([{"role": "user", "content": "Why?"}, {"role": "assistant", "content": "Because.", "reasoning": "I ponder."}])
    on = render(tokenizer, turns, think=True)
    off = render(tokenizer, turns, think=False)
    assert "<think>\nI ponder.\n</think>" in on and "Because." in on
    assert "I ponder." not in off and "Because." in off
    prompt_off = render(tokenizer, turns[:1], think=False, add_generation_prompt=True)
    assert prompt_off.endswith("<think>\n\n</think>\n\n")
    prompt_on = render(tokenizer, turns[:1], think=True, add_generation_prompt=True)
    assert prompt_on.endswith("<think>\n")


def test_default_template_for_tokenizers_without_a_thinking_switch(tokenizer):
    class NoSwitch:
        chat_template = "{{ messages }}"

        def apply_chat_template(self, messages, chat_template, **kw):
            return tokenizer.apply_chat_template(messages, chat_template=chat_template, **kw)

    turns = parse_messages([{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A", "reasoning": "R"}])
    text = render(NoSwitch(), turns, think=True)
    assert text.startswith("<|im_start|>user\nQ<|im_end|>") and "<think>\nR\n</think>\n\nA<|im_end|>" in text
    assert "enable_thinking" in DEFAULT_TEMPLATE
