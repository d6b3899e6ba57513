import pytest
import torch

from edgequant.compress.grid import (
    dequantize_weight,
    group_params,
    pack_codes,
    quantize_weight,
    unpack_codes,
)
from edgequant.compress.scheme import QuantScheme, fitting_group_sizes
from edgequant.errors import SchemeError


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("n", [32, 576, 37])
def test_pack_unpack_round_trip(bits, n):
    g = torch.Generator().manual_seed(bits * 1000 + n)
    codes = torch.randint(0, 1 << bits, (5, n), generator=g, dtype=torch.int32).to(torch.uint8)
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8
    assert packed.shape == (5, (n * bits + 7) // 8)
    assert torch.equal(unpack_codes(packed, bits, n), codes)


def test_4bit_packing_is_low_nibble_first():
    codes = torch.tensor([[1, 2, 15, 0]], dtype=torch.uint8)
    assert pack_codes(codes, 4).tolist() == [[0x21, 0x0F]]


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("bits,group", [(4, 32), (3, 128), (8, -1), (2, 64)])
def test_rtn_codes_scales_and_dequantization(symmetric, bits, group):
    scheme = QuantScheme(bits=bits, group_size=group, symmetric=symmetric)
    w = torch.randn(16, 256, generator=torch.Generator().manual_seed(1)) * 0.05
    codes, scales, zeros = quantize_weight(w, scheme)
    n_groups = 1 if group == -1 else 256 // group
    assert codes.shape == (16, 256) and scales.shape == (16, n_groups) and zeros.shape == (16, n_groups)
    assert scales.dtype == torch.float16 and int(codes.max()) <= scheme.maxq
    if symmetric:
        assert torch.all(zeros == scheme.implicit_zero)
    q = dequantize_weight(codes, scales, zeros)
    # every weight lands within half a step of its grid point unless clipped at the range's edge
    step = scales.float().repeat_interleave(256 // n_groups, dim=1)
    inside = (q - w).abs() <= step / 2 + 1e-7
    assert inside.float().mean() > 0.97
    # relative error shrinks with bits
    rel = float(((q - w) ** 2).sum() / (w**2).sum())
    assert rel < {2: 0.5, 3: 0.1, 4: 0.03, 8: 1e-4}[bits]


def test_scales_are_float16_exact_so_dequantization_is_exact_in_float32():
    w = torch.randn(8, 64, generator=torch.Generator().manual_seed(2))
    scheme = QuantScheme(4, 32, False)
    codes, scales, zeros = quantize_weight(w, scheme)
    q = dequantize_weight(codes, scales, zeros)
    exact = (codes.double() - zeros.double().repeat_interleave(32, 1)) * scales.double().repeat_interleave(32, 1)
    assert torch.equal(q.double(), exact)


def test_zero_group_gets_a_finite_scale():
    p = group_params(torch.zeros(3, 32), QuantScheme(4, 32, True))
    assert torch.isfinite(p.scale).all() and (p.scale > 0).all()


def test_bad_schemes_are_user_errors():
    with pytest.raises(SchemeError, match="bits=5"):
        QuantScheme(bits=5)
    with pytest.raises(SchemeError, match="group size 48"):
        QuantScheme(group_size=48)
    with pytest.raises(SchemeError, match="does not divide"):
        QuantScheme(4, 128).n_groups(576)
    assert fitting_group_sizes(576) == [-1, 32, 64]


def test_bits_per_weight_counts_scales():
    assert QuantScheme(4, 32, True).bits_per_weight(4096) == 4.5
    assert QuantScheme(4, 128, False).bits_per_weight(4096) == 4 + 20 / 128


def test_scales_are_exact_in_float16_and_bfloat16():
    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(5)) * torch.logspace(-4, 1, 64)[:, None]
    for scheme in (QuantScheme(4, 32, True), QuantScheme(4, 64, False), QuantScheme(8, -1, True)):
        _, scales, _ = quantize_weight(w, scheme)
        s32 = scales.float()
        assert torch.equal(s32.to(torch.bfloat16).float(), s32)
        assert torch.equal(s32.to(torch.float16).float(), s32)
