"""The decoder every exporter lowers: a Llama-family LM written out plainly for export.

Exporters do not trace transformers' modelling code (its masks call ops such as ``diff`` that exporters
reject, and its caches are Python objects). :class:`DecoderLM` rebuilds the same computation from a
loaded checkpoint (float or quantized) with the KV cache as an explicit part of the signature:

- ``StaticKVCache``: mutable buffers of ``max_seq_len`` positions, updated in place; one
  ``forward(tokens, input_pos)`` serves prefill (many tokens) and decode (one). ExecuTorch and Core ML
  (as state) take this form.
- ``FunctionalKV``: past keys/values come in as inputs and present ones go out as outputs, the layout of
  ONNX Runtime GenAI and Optimum.

Linears are whatever modules the exporter puts in (``linear_fn``): our ``QuantizedLinear`` by default,
or a backend-specific module built from the same codes and scales.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from edgequant.models.loading import LoadedModel


@dataclass
class LLMSpec:
    """Geometry and token ids an artifact carries as metadata."""

    vocab_size: int
    hidden_size: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    rms_eps: float
    max_seq_len: int
    bos_id: int | None
    eos_ids: list[int] = field(default_factory=list)
    qk_norm: bool = False

    def to_metadata(self) -> dict:
        return {
            "vocab_size": self.vocab_size,
            "n_layers": self.n_layers,
            "n_kv_heads": self.n_kv_heads,
            "head_dim": self.head_dim,
            "max_seq_len": self.max_seq_len,
            "bos_id": -1 if self.bos_id is None else self.bos_id,
            "eos_ids": list(self.eos_ids),
        }


class RMSNorm(nn.Module):
    def __init__(self, weight: torch.Tensor, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.detach().float().clone(), requires_grad=False)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf * self.weight).to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class StaticKVCache(nn.Module):
    """Keys and values of every layer for ``max_seq_len`` positions, written in place at ``input_pos``."""

    def __init__(self, n_layers: int, n_kv_heads: int, max_seq_len: int, head_dim: int, dtype=torch.float32) -> None:
        super().__init__()
        self.max_seq_len = max_seq_len
        for i in range(n_layers):
            self.register_buffer(f"k_{i}", torch.zeros(1, n_kv_heads, max_seq_len, head_dim, dtype=dtype), persistent=False)
            self.register_buffer(f"v_{i}", torch.zeros(1, n_kv_heads, max_seq_len, head_dim, dtype=dtype), persistent=False)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor, input_pos: torch.Tensor):
        kc = getattr(self, f"k_{layer}")
        vc = getattr(self, f"v_{layer}")
        kc.index_copy_(2, input_pos, k.to(kc.dtype))
        vc.index_copy_(2, input_pos, v.to(vc.dtype))
        # a query at position p sees cache slots 0..p
        mask = torch.arange(self.max_seq_len, device=input_pos.device)[None, :] <= input_pos[:, None]
        return kc, vc, mask


class FunctionalKV:
    """Past keys/values in, present keys/values out (one call)."""

    def __init__(self, past_keys: list[torch.Tensor], past_values: list[torch.Tensor], attention_mask: torch.Tensor) -> None:
        self.past_keys, self.past_values = past_keys, past_values
        self.attention_mask = attention_mask  # [B, past + T], 1 for real tokens
        self.present_keys: list[torch.Tensor] = []
        self.present_values: list[torch.Tensor] = []

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor, input_pos: torch.Tensor):
        keys = torch.cat([self.past_keys[layer], k], dim=2)
        values = torch.cat([self.past_values[layer], v], dim=2)
        self.present_keys.append(keys)
        self.present_values.append(values)
        total = keys.shape[2]
        t = k.shape[2]
        # causal over the new tokens, and only real (unpadded) positions
        q_pos = torch.arange(t, device=k.device)[:, None] + (total - t)
        causal = torch.arange(total, device=k.device)[None, :] <= q_pos
        mask = causal[None, None] & self.attention_mask[:, None, None, :].bool()
        return keys, values, mask


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float) -> torch.Tensor:
    """q [B, H, T, D], k/v [B, KV, S, D] (grouped-query), mask broadcastable to [B, H, T, S] (True = attend)."""
    rep = q.shape[1] // k.shape[1]
    if rep > 1:
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


class Block(nn.Module):
    def __init__(self, spec: LLMSpec, parts: dict[str, nn.Module]) -> None:
        super().__init__()
        self.spec = spec
        self.input_layernorm = parts["input_layernorm"]
        self.post_attention_layernorm = parts["post_attention_layernorm"]
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (parts[n] for n in ("q_proj", "k_proj", "v_proj", "o_proj"))
        self.gate_proj, self.up_proj, self.down_proj = (parts[n] for n in ("gate_proj", "up_proj", "down_proj"))
        self.q_norm = parts.get("q_norm")
        self.k_norm = parts.get("k_norm")

    def forward(self, x, cos, sin, layer: int, cache, input_pos, attention: Callable):
        s = self.spec
        b, t, _ = x.shape
        h = self.input_layernorm(x)
        q = self.q_proj(h).view(b, t, s.n_heads, s.head_dim)
        k = self.k_proj(h).view(b, t, s.n_kv_heads, s.head_dim)
        v = self.v_proj(h).view(b, t, s.n_kv_heads, s.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        keys, values, mask = cache.update(layer, k, v, input_pos)
        a = attention(q, keys, values, mask, s.head_dim**-0.5)
        x = x + self.o_proj(a.transpose(1, 2).reshape(b, t, s.n_heads * s.head_dim))
        h = self.post_attention_layernorm(x)
        return x + self.down_proj(torch.nn.functional.silu(self.gate_proj(h)) * self.up_proj(h))


def default_linear_fn(name: str, module: nn.Module) -> nn.Module:
    return module


class DecoderLM(nn.Module):
    """``forward(tokens [1, T], input_pos [T]) -> logits [1, T, vocab]`` with a static KV cache."""

    def __init__(self, spec: LLMSpec, embed: nn.Module, blocks: list[Block], norm: nn.Module, lm_head: nn.Module, inv_freq: torch.Tensor, rope_scale: float, cache_dtype=torch.float32) -> None:
        super().__init__()
        self.spec = spec
        self.embed_tokens = embed
        self.layers = nn.ModuleList(blocks)
        self.norm = norm
        self.lm_head = lm_head
        self.register_buffer("inv_freq", inv_freq.detach().float().clone(), persistent=False)
        self.rope_scale = float(rope_scale)
        self.cache = StaticKVCache(spec.n_layers, spec.n_kv_heads, spec.max_seq_len, spec.head_dim, cache_dtype)
        self.attention: Callable = sdpa_attention

    def rope(self, positions: torch.Tensor, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin for positions [B, T] (or [T]) -> [B or 1, 1, T, head_dim]."""
        if positions.dim() == 1:
            positions = positions[None]
        freqs = positions[..., None].float() * self.inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        return (emb.cos() * self.rope_scale).to(dtype)[:, None], (emb.sin() * self.rope_scale).to(dtype)[:, None]

    def run(self, tokens: torch.Tensor, positions: torch.Tensor, cache, input_pos: torch.Tensor) -> torch.Tensor:
        x = self.embed_tokens(tokens)
        cos, sin = self.rope(positions, x.dtype)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, i, cache, input_pos, self.attention)
        return self.lm_head(self.norm(x))

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        return self.run(tokens, input_pos, self.cache, input_pos)

    def reset_cache(self) -> None:
        for b in self.cache.buffers():
            b.zero_()

    @classmethod
    def from_loaded(
        cls,
        loaded: LoadedModel,
        max_seq_len: int = 1024,
        linear_fn: Callable[[str, nn.Module], nn.Module] = default_linear_fn,
        embed_fn: Callable[[str, nn.Module], nn.Module] | None = None,
        cache_dtype=torch.float32,
    ) -> "DecoderLM":
        model, adapter = loaded.model, loaded.adapter
        cfg = model.config
        n_heads = cfg.num_attention_heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
        eos = cfg.eos_token_id
        eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
        tok = loaded.tokenizer
        if tok is not None and tok.eos_token_id is not None and tok.eos_token_id not in eos_ids:
            eos_ids.append(tok.eos_token_id)
        blocks_src = adapter.block_list(model)
        qk_norm = hasattr(blocks_src[0].self_attn, "q_norm")
        spec = LLMSpec(
            vocab_size=cfg.vocab_size,
            hidden_size=cfg.hidden_size,
            n_layers=len(blocks_src),
            n_heads=n_heads,
            n_kv_heads=cfg.num_key_value_heads,
            head_dim=head_dim,
            rms_eps=cfg.rms_norm_eps,
            max_seq_len=max_seq_len,
            bos_id=cfg.bos_token_id if cfg.bos_token_id is not None else getattr(tok, "bos_token_id", None),
            eos_ids=eos_ids,
            qk_norm=qk_norm,
        )
        blocks = []
        for i, src in enumerate(blocks_src):
            prefix = f"{adapter.blocks}.{i}."
            parts: dict[str, nn.Module] = {
                "input_layernorm": RMSNorm(src.input_layernorm.weight, cfg.rms_norm_eps),
                "post_attention_layernorm": RMSNorm(src.post_attention_layernorm.weight, cfg.rms_norm_eps),
            }
            for n in adapter.linear_names():
                parts[n.split(".")[-1]] = linear_fn(prefix + n, src.get_submodule(n))
            if qk_norm:
                parts["q_norm"] = RMSNorm(src.self_attn.q_norm.weight, cfg.rms_norm_eps)
                parts["k_norm"] = RMSNorm(src.self_attn.k_norm.weight, cfg.rms_norm_eps)
            blocks.append(Block(spec, parts))
        embed_src = model.get_submodule(adapter.embed)
        embed = embed_fn(adapter.embed, embed_src) if embed_fn else embed_src
        lm_head = linear_fn(adapter.lm_head, model.get_submodule(adapter.lm_head))
        norm = RMSNorm(model.get_submodule(adapter.final_norm).weight, cfg.rms_norm_eps)
        rotary = model.model.rotary_emb
        lm = cls(spec, embed, blocks, norm, lm_head, rotary.inv_freq, getattr(rotary, "attention_scaling", 1.0), cache_dtype)
        return lm.eval()


class FunctionalDecoderLM(nn.Module):
    """The same decoder with past/present key-value tensors in the signature (ONNX style):

    ``forward(input_ids [B, T], attention_mask [B, P+T], position_ids [B, T], *past) ->
    (logits [B, T, V], *present)`` where ``past`` is ``key_0, value_0, key_1, value_1, ...`` each
    ``[B, n_kv_heads, P, head_dim]``.
    """

    def __init__(self, lm: DecoderLM) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, input_ids, attention_mask, position_ids, *past):
        kv = FunctionalKV(list(past[0::2]), list(past[1::2]), attention_mask)
        logits = self.lm.run(input_ids, position_ids, kv, input_pos=position_ids[0])
        present = [t for pair in zip(kv.present_keys, kv.present_values) for t in pair]
        return (logits, *present)
