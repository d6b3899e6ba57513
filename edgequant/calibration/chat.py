"""Rendering chat records, in thinking or non-thinking mode.

A record is ``{"messages": [{"role": ..., "content": ..., "reasoning": ...}, ...]}``. An assistant turn's
reasoning comes from its ``reasoning`` (or ``reasoning_content``) field, or from a ``<think>...</think>``
block at the start of its content. Thinking mode keeps the reasoning in the rendered text; non-thinking
mode drops it and renders the turn with an empty think block, as Qwen3's template does with
``enable_thinking=False``.

Tokenizers whose chat template has the ``enable_thinking`` switch render through it. Others render
through :data:`DEFAULT_TEMPLATE`, a ChatML layout with ``<think>`` blocks:

    <|im_start|>user\n{content}<|im_end|>\n
    <|im_start|>assistant\n<think>\n{reasoning}\n</think>\n\n{content}<|im_end|>\n
"""
from __future__ import annotations

import re
from dataclasses import dataclass

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"

DEFAULT_TEMPLATE = (
    "{% for m in messages %}"
    "<|im_start|>{{ m['role'] }}\n"
    "{% if m['role'] == 'assistant' %}"
    "{% if m.get('reasoning') %}<think>\n{{ m['reasoning'] }}\n</think>\n\n"
    "{% elif enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}"
    "{% endif %}"
    "{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n"
    "{% else %}<think>\n{% endif %}{% endif %}"
)

_THINK_RE = re.compile(r"^\s*<think>(.*?)</think>\s*", re.DOTALL)


@dataclass
class Turn:
    role: str
    content: str
    reasoning: str = ""


def parse_messages(messages: list[dict]) -> list[Turn]:
    turns = []
    for m in messages:
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ValueError("each message needs 'role' and 'content'")
        content = str(m["content"])
        reasoning = str(m.get("reasoning") or m.get("reasoning_content") or "")
        if m["role"] == "assistant" and not reasoning:
            match = _THINK_RE.match(content)
            if match:
                reasoning, content = match.group(1).strip(), content[match.end():]
        turns.append(Turn(m["role"], content, reasoning.strip()))
    return turns


def has_thinking_switch(tokenizer) -> bool:
    template = getattr(tokenizer, "chat_template", None)
    return isinstance(template, str) and "enable_thinking" in template


def template_for(tokenizer) -> str:
    return tokenizer.chat_template if has_thinking_switch(tokenizer) else DEFAULT_TEMPLATE


def render(tokenizer, turns: list[Turn], think: bool, add_generation_prompt: bool = False) -> str:
    """Render a conversation. With ``think`` the assistant turns keep their reasoning."""
    messages = []
    for t in turns:
        m = {"role": t.role, "content": t.content}
        if t.role == "assistant" and think and t.reasoning:
            m["reasoning"] = t.reasoning
            m["reasoning_content"] = t.reasoning  # the field name Qwen3's template reads
        messages.append(m)
    return tokenizer.apply_chat_template(
        messages,
        chat_template=template_for(tokenizer),
        tokenize=False,
        add_generation_prompt=add_generation_prompt,
        enable_thinking=think,
    )
