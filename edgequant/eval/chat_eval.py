"""Think-aware evaluation: chat records rendered in thinking or non-thinking mode, with the tokens of the
reasoning and of the final answer scored separately, so a user sees whether quantization hurts
reasoning more than answering."""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from edgequant.calibration.chat import parse_messages, render
from edgequant.errors import CalibrationError, InputError


@dataclass
class ChatWindows:
    windows: list[torch.Tensor]
    masks: dict[str, list[torch.Tensor]]  # per window, over target positions (token j+1)
    records: int
    thinking_records: int


def is_chat_jsonl(path) -> bool:
    from edgequant.calibration.sources import builtin_path

    p = builtin_path(path) or Path(str(path))
    if p.suffix != ".jsonl" or not p.is_file():
        return False
    with open(p, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                try:
                    return isinstance(json.loads(line).get("messages"), list)
                except (json.JSONDecodeError, AttributeError):
                    return False
    return False


def _spans(text: str, turns, think: bool) -> dict[str, list[tuple[int, int]]]:
    """Character spans of the reasoning and the answers of the assistant turns in the rendered text."""
    spans = {"think": [], "answer": []}
    pos = 0
    for t in turns:
        if t.role != "assistant":
            at = text.find(t.content, pos)
            pos = at + len(t.content) if at >= 0 else pos
            continue
        if think and t.reasoning:
            at = text.find(t.reasoning, pos)
            if at >= 0:
                spans["think"].append((at, at + len(t.reasoning)))
                pos = at + len(t.reasoning)
        at = text.find(t.content, pos)
        if at >= 0:
            spans["answer"].append((at, at + len(t.content)))
            pos = at + len(t.content)
    return spans


def chat_windows(tokenizer, path, seq_len: int, think_mix: float | None = None, seed: int = 0, max_records: int | None = None) -> ChatWindows:
    """One window per record (truncated to ``seq_len``). ``think_mix`` is the share rendered in thinking
    mode (None: records with reasoning in thinking mode, others not)."""
    from edgequant.calibration.sources import builtin_path

    path = builtin_path(path) or path
    rng = random.Random(seed)
    windows, think_masks, answer_masks = [], [], []
    n_think = 0
    with open(path, encoding="utf-8") as f:
        lines = [l for l in f if l.strip()]
    for lineno, line in enumerate(lines[:max_records] if max_records else lines, 1):
        try:
            rec = json.loads(line)
            turns = parse_messages(rec["messages"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise InputError(f"{path}:{lineno}: not a chat record ({e})") from None
        think = any(t.reasoning for t in turns) if think_mix is None else rng.random() < think_mix
        n_think += int(think)
        text = render(tokenizer, turns, think=think)
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        ids = torch.tensor(enc["input_ids"][:seq_len])
        offsets = enc["offset_mapping"][:seq_len]
        spans = _spans(text, turns, think)
        masks = {}
        for kind in ("think", "answer"):
            m = torch.tensor([any(a <= s < b for a, b in spans[kind]) for s, _ in offsets], dtype=torch.bool)
            masks[kind] = m[1:]  # scores target token j+1
        if ids.numel() < 2:
            continue
        windows.append(ids)
        think_masks.append(masks["think"])
        answer_masks.append(masks["answer"])
    if not windows:
        raise CalibrationError(f"{path} holds no chat records to score")
    return ChatWindows(windows, {"think": think_masks, "answer": answer_masks}, len(windows), n_think)
