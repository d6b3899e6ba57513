"""Capturing what the first decoder block receives, so blocks can then be run one at a time."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


class _Captured(Exception):
    pass


@dataclass
class BlockBatch:
    """The hidden states one batch brings to a block, and the keyword arguments the model passes
    every block (attention mask, position ids, rotary embeddings). ``tag`` marks guard batches."""

    hidden: torch.Tensor
    kwargs: dict
    tag: str = "calib"


@torch.inference_mode()
def capture_block_inputs(
    model: nn.Module, first_block: nn.Module, windows: torch.Tensor, batch_size: int, device: str, tag: str = "calib"
) -> list[BlockBatch]:
    """Run the model on ``windows`` only as far as the first block and keep what it receives."""
    captured: list[BlockBatch] = []

    def hook(module, args, kwargs):
        hidden = args[0] if args else kwargs.pop("hidden_states")
        kw = {k: v for k, v in kwargs.items() if k not in ("cache", "past_key_values", "use_cache")}
        captured.append(BlockBatch(hidden.detach().to(device), _to(kw, device), tag))
        raise _Captured

    handle = first_block.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for start in range(0, windows.shape[0], batch_size):
            try:
                model(input_ids=windows[start : start + batch_size].to(next(model.parameters()).device), use_cache=False)
            except _Captured:
                pass
    finally:
        handle.remove()
    return captured


def _to(obj, device):
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, tuple):
        return tuple(_to(o, device) for o in obj)
    if isinstance(obj, list):
        return [_to(o, device) for o in obj]
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    return obj
