"""Quantization schemes: how many bits, how weights are grouped, symmetric or not."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from edgequant.errors import SchemeError

SUPPORTED_BITS = (2, 3, 4, 8)
SUPPORTED_GROUP_SIZES = (-1, 32, 64, 128)


@dataclass(frozen=True)
class QuantScheme:
    """Integer weight quantization of a linear layer, one scale (and zero point) per group.

    ``group_size`` counts input channels; -1 means one group per output channel (per-channel).
    Symmetric schemes have the implicit zero point ``2 ** (bits - 1)``; asymmetric ones store an
    integer zero point per group. Codes are unsigned integers in ``[0, 2 ** bits - 1]`` and the
    weight they stand for is ``(code - zero) * scale``.
    """

    bits: int = 4
    group_size: int = 128
    symmetric: bool = True

    def __post_init__(self) -> None:
        if self.bits not in SUPPORTED_BITS:
            raise SchemeError(f"bits={self.bits} is not supported; choose one of {', '.join(map(str, SUPPORTED_BITS))}")
        if self.group_size not in SUPPORTED_GROUP_SIZES:
            raise SchemeError(
                f"group size {self.group_size} is not supported; choose one of "
                f"{', '.join(map(str, SUPPORTED_GROUP_SIZES))} (-1 is per channel)"
            )

    @property
    def maxq(self) -> int:
        return (1 << self.bits) - 1

    @property
    def implicit_zero(self) -> int:
        return 1 << (self.bits - 1)

    def group_width(self, in_features: int) -> int:
        return in_features if self.group_size == -1 else self.group_size

    def fits(self, in_features: int) -> bool:
        return self.group_size == -1 or in_features % self.group_size == 0

    def n_groups(self, in_features: int) -> int:
        if not self.fits(in_features):
            raise SchemeError(f"group size {self.group_size} does not divide input width {in_features}")
        return in_features // self.group_width(in_features)

    def bits_per_weight(self, in_features: int) -> float:
        """Storage cost including a float16 scale (and an integer zero point) per group."""
        g = self.group_width(in_features)
        extra = 16 + (0 if self.symmetric else self.bits)
        return self.bits + extra / g

    def describe(self) -> str:
        g = "per-channel" if self.group_size == -1 else f"g{self.group_size}"
        return f"int{self.bits} {g} {'sym' if self.symmetric else 'asym'}"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "QuantScheme":
        unknown = set(d) - {"bits", "group_size", "symmetric"}
        if unknown:
            raise SchemeError(f"unknown scheme keys: {', '.join(sorted(unknown))}")
        return cls(**d)


def fitting_group_sizes(in_features: int) -> list[int]:
    return [g for g in SUPPORTED_GROUP_SIZES if g == -1 or in_features % g == 0]
