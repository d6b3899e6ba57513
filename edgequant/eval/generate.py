"""Generation over any runtime, with thinking control.

``think="on"`` / ``"off"`` renders the chat template in that mode (Qwen3's ``enable_thinking`` switch, or
our documented default template). ``think_budget=N`` caps the thinking: once the model has produced N
tokens inside an open think block, the runner inserts the end-of-thinking marker itself and lets the
model answer. With thinking off the runner also refuses to open a think block, so none is produced.
The loop only calls :meth:`LLMRuntime.forward`, so it is the same for every target.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch

from edgequant.calibration.chat import THINK_CLOSE, THINK_OPEN, Turn, render
from edgequant.errors import EdgequantError
from edgequant.targets.runtime import LLMRuntime

THINK_END_TEXT = f"\n{THINK_CLOSE}\n\n"


@dataclass
class GenerationResult:
    prompt: str
    text: str  # everything generated, markers included
    thinking: str
    answer: str
    prompt_tokens: int
    new_tokens: int
    thinking_tokens: int
    forced_think_end: bool
    stop_reason: str  # "eos", "max_new_tokens", "max_seq_len"
    ttft_s: float
    prefill_tok_s: float
    decode_tok_s: float

    def to_dict(self) -> dict:
        return asdict(self)


def render_prompt(tokenizer, prompt: str, think: str | None, chat: bool = True) -> str:
    if not chat or not getattr(tokenizer, "chat_template", None) and think is None:
        return prompt
    turns = [Turn("user", prompt)]
    if think is None:
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    return render(tokenizer, turns, think=(think == "on"), add_generation_prompt=True)


def _single_token(tokenizer, text: str) -> int | None:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids[0] if len(ids) == 1 else None


class _Sampler:
    def __init__(self, temperature: float, top_p: float, seed: int) -> None:
        self.temperature, self.top_p = temperature, top_p
        self.gen = torch.Generator().manual_seed(seed)

    def __call__(self, logits: torch.Tensor) -> int:
        if self.temperature <= 0:
            return int(torch.argmax(logits))
        probs = torch.softmax(logits.float() / self.temperature, dim=-1)
        if self.top_p < 1.0:
            sorted_p, idx = torch.sort(probs, descending=True)
            keep = torch.cumsum(sorted_p, 0) - sorted_p < self.top_p
            probs = torch.zeros_like(probs).scatter(0, idx[keep], sorted_p[keep])
        return int(torch.multinomial(probs, 1, generator=self.gen))


def generate(
    runtime: LLMRuntime,
    tokenizer,
    prompt: str,
    *,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    think: str | None = None,
    think_budget: int | None = None,
    chat: bool = True,
    ignore_eos: bool = False,
    on_text: Callable[[str], None] | None = None,
) -> GenerationResult:
    if think not in (None, "on", "off"):
        raise EdgequantError(f"--think takes on or off, not {think!r}")
    if think_budget is not None and think_budget < 0:
        raise EdgequantError("--think-budget must be 0 or more")
    rendered = render_prompt(tokenizer, prompt, think, chat)
    ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    bos = runtime.meta.bos_id
    if bos is not None and bos >= 0 and getattr(tokenizer, "add_bos_token", False) and (not ids or ids[0] != bos):
        ids = [bos] + ids
    if not ids:
        raise EdgequantError("the prompt is empty")
    max_len = runtime.meta.max_seq_len
    if len(ids) >= max_len:
        raise EdgequantError(f"the prompt has {len(ids)} tokens; the artifact holds at most {max_len}")

    eos = set(runtime.meta.eos_ids) | ({tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set())
    open_id = _single_token(tokenizer, THINK_OPEN)
    end_ids = tokenizer(THINK_END_TEXT, add_special_tokens=False)["input_ids"]
    in_think = rendered.count(THINK_OPEN) > rendered.count(THINK_CLOSE)
    sample = _Sampler(temperature, top_p, seed)

    runtime.reset()
    t0 = time.perf_counter()
    logits = runtime.prefill(torch.tensor(ids))[-1]
    pos = len(ids)
    generated: list[int] = []
    think_ids: list[int] = []
    answer_ids: list[int] = []
    forced = False
    stop = "max_new_tokens"
    ttft = None
    t_first = t0
    shown = ""

    def emit() -> None:
        nonlocal shown
        text = tokenizer.decode(generated, skip_special_tokens=False)
        if on_text and len(text) > len(shown):
            on_text(text[len(shown):])
        shown = text

    while len(generated) < max_new_tokens:
        if think == "off" and open_id is not None:
            logits = logits.clone()
            logits[open_id] = float("-inf")
        if in_think and think_budget is not None and len(think_ids) >= think_budget:
            # the budget is spent: close the block ourselves and let the model answer
            forced, in_think = True, False
            room = min(len(end_ids), max_len - pos)
            generated.extend(end_ids[:room])
            emit()
            if room < len(end_ids):
                stop = "max_seq_len"
                break
            logits = runtime.forward(torch.tensor(end_ids), pos)[-1]
            pos += len(end_ids)
            continue
        tok = sample(logits)
        if ttft is None:
            ttft = time.perf_counter() - t0
            t_first = time.perf_counter()
        if tok in eos and not ignore_eos:
            stop = "eos"
            break
        generated.append(tok)
        (think_ids if in_think else answer_ids).append(tok)
        emit()
        tail = tokenizer.decode(generated[-8:], skip_special_tokens=False)
        if in_think and tail.endswith(THINK_CLOSE):
            in_think = False
        elif not in_think and tail.endswith(THINK_OPEN):
            in_think = True
        if pos >= max_len:
            stop = "max_seq_len"
            break
        logits = runtime.forward(torch.tensor([tok]), pos)[-1]
        pos += 1
    t_end = time.perf_counter()
    ttft = ttft if ttft is not None else t_end - t0

    def clean(tok_ids: list[int]) -> str:
        text = tokenizer.decode(tok_ids, skip_special_tokens=False)
        return text.replace(THINK_OPEN, "").replace(THINK_CLOSE, "").strip()

    decode_n = max(0, len(generated) - 1)
    return GenerationResult(
        prompt=rendered,
        text=tokenizer.decode(generated, skip_special_tokens=False),
        thinking=clean(think_ids),
        answer=clean(answer_ids),
        prompt_tokens=len(ids),
        new_tokens=len(generated),
        thinking_tokens=len(think_ids),
        forced_think_end=forced,
        stop_reason=stop,
        ttft_s=round(ttft, 6),
        prefill_tok_s=round(len(ids) / ttft, 3) if ttft > 0 else 0.0,
        decode_tok_s=round(decode_n / (t_end - t_first), 3) if decode_n and t_end > t_first else 0.0,
    )
