"""Architecture adapters: where a checkpoint keeps its decoder blocks, their linears and norms.

edgequant names the blocks instead of tracing the model, so a new architecture is a few lines here.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from edgequant.errors import UnsupportedArchitectureError


@dataclass(frozen=True)
class LinearGroup:
    """Linears of one block that read the same input, and the module whose output that input is.

    ``prev`` is what AWQ folds its input scales into (a norm or a linear); ``inspect`` is the module
    whose output AWQ's scale search keeps close to the float one; names are relative to the block. Groups are listed in execution order, which is also the order true-sequential GPTQ takes.
    """

    prev: str
    linears: tuple[str, ...]
    inspect: str  # the module whose output AWQ's scale search compares (attention, MLP, or the linear)


LLAMA_GROUPS = (
    LinearGroup("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "self_attn"),
    LinearGroup("self_attn.v_proj", ("self_attn.o_proj",), "self_attn.o_proj"),
    LinearGroup("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj"), "mlp"),
    LinearGroup("mlp.up_proj", ("mlp.down_proj",), "mlp.down_proj"),
)


@dataclass(frozen=True)
class ArchitectureAdapter:
    """Names of a decoder-only architecture's parts, relative to the causal-LM model."""

    family: str
    model_types: tuple[str, ...]
    blocks: str = "model.layers"
    embed: str = "model.embed_tokens"
    final_norm: str = "model.norm"
    lm_head: str = "lm_head"
    groups: tuple[LinearGroup, ...] = LLAMA_GROUPS

    def block_list(self, model: nn.Module) -> nn.ModuleList:
        return model.get_submodule(self.blocks)

    def linear_names(self) -> list[str]:
        """Block-relative linear names in execution order."""
        return [name for g in self.groups for name in g.linears]

    def all_linear_names(self, model: nn.Module) -> list[str]:
        """Full names of every block linear, block by block."""
        n = len(self.block_list(model))
        return [f"{self.blocks}.{i}.{name}" for i in range(n) for name in self.linear_names()]


ADAPTERS = (
    ArchitectureAdapter("llama", ("llama",)),
    ArchitectureAdapter("mistral", ("mistral",)),
    ArchitectureAdapter("qwen2", ("qwen2",)),
    ArchitectureAdapter("qwen3", ("qwen3",)),
)


def known_model_types() -> list[str]:
    return sorted(t for a in ADAPTERS for t in a.model_types)


def adapter_for(model_type: str, architectures: list[str] | None = None) -> ArchitectureAdapter:
    for adapter in ADAPTERS:
        if model_type in adapter.model_types:
            return adapter
    arch = f" ({', '.join(architectures)})" if architectures else ""
    raise UnsupportedArchitectureError(
        f"architecture '{model_type}'{arch} is not supported; edgequant knows {', '.join(known_model_types())}"
    )
