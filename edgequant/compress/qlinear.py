"""A linear layer that computes with integer codes and per-group scales."""
from __future__ import annotations

import torch
from torch import nn

from edgequant.compress.grid import dequantize_weight
from edgequant.compress.scheme import QuantScheme


class QuantizedLinear(nn.Module):
    """``y = x @ W^T + b`` with ``W = (codes - zeros) * scales`` per group.

    The codes, scales and zero points are kept as buffers (they are what every exporter reads); the
    float32 weight they stand for is materialised once, so evaluation runs at float speed and computes
    with exactly the dequantized weight.
    """

    def __init__(
        self,
        codes: torch.Tensor,
        scales: torch.Tensor,
        zeros: torch.Tensor,
        scheme: QuantScheme,
        bias: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.out_features, self.in_features = codes.shape
        self.scheme = scheme
        self.register_buffer("codes", codes.to(torch.uint8).contiguous())
        self.register_buffer("scales", scales.to(torch.float16).contiguous())
        self.register_buffer("zeros", zeros.to(torch.uint8).contiguous())
        self.register_buffer("weight", dequantize_weight(self.codes, self.scales, self.zeros), persistent=False)
        if bias is not None:
            self.register_buffer("bias", bias.detach().float().clone())
        else:
            self.bias = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight if self.weight.dtype == x.dtype else self.weight.to(x.dtype)
        return nn.functional.linear(x, w, None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, scheme={self.scheme.describe()}"


class QuantizedEmbedding(nn.Module):
    """An embedding table stored as integer codes with per-group scales along the hidden dimension."""

    def __init__(self, codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, scheme: QuantScheme) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = codes.shape
        self.scheme = scheme
        self.register_buffer("codes", codes.to(torch.uint8).contiguous())
        self.register_buffer("scales", scales.to(torch.float16).contiguous())
        self.register_buffer("zeros", zeros.to(torch.uint8).contiguous())
        self.register_buffer("weight", dequantize_weight(self.codes, self.scales, self.zeros), persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return nn.functional.embedding(ids, self.weight)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, scheme={self.scheme.describe()}"


def set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)
