import torch

from edgequant.compress.gptq import GPTQConfig, gptq_quantize, output_error
from edgequant.compress.grid import dequantize_weight, quantize_weight
from edgequant.compress.scheme import QuantScheme


def correlated_inputs(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g) / d**0.5
    scale = torch.logspace(0, 1.5, d)[torch.randperm(d, generator=g)]  # some channels much louder
    return (torch.randn(n, d, generator=g) @ mix + 0.3 * torch.randn(n, d, generator=g)) * scale


def hessian(x: torch.Tensor) -> torch.Tensor:
    return 2 * x.T @ x / x.shape[0]


def test_gptq_beats_rtn_on_the_layer_output_for_correlated_inputs():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(96, 256, generator=g) * 0.02
    both = correlated_inputs(8192, 256, seed=1)
    x, x_test = both[:4096], both[4096:]  # calibration inputs, and fresh inputs of the same distribution
    for scheme in (QuantScheme(4, 64, True), QuantScheme(3, 128, False), QuantScheme(4, -1, True)):
        q_rtn = dequantize_weight(*quantize_weight(w, scheme))
        for cfg in (GPTQConfig(), GPTQConfig(act_order=False)):  # act-order (the default) and natural order
            q_gptq = dequantize_weight(*gptq_quantize(w, hessian(x), scheme, cfg))
            for xs in (x, x_test):
                e_rtn = ((xs @ (w - q_rtn).T) ** 2).sum()
                e_gptq = ((xs @ (w - q_gptq).T) ** 2).sum()
                assert e_gptq < 0.8 * e_rtn, (scheme, cfg, float(e_gptq / e_rtn))


def test_output_error_matches_the_direct_computation():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(8, 32, generator=g)
    q = w + 0.01 * torch.randn(8, 32, generator=g)
    x = torch.randn(500, 32, generator=g)
    direct = float(((x @ (w - q).T) ** 2).sum() / ((x @ w.T) ** 2).sum())
    assert abs(output_error(w, q, x.T @ x) - direct) < 1e-9


def test_act_order_keeps_natural_layout_and_helps():
    g = torch.Generator().manual_seed(4)
    w = torch.randn(64, 128, generator=g) * 0.02
    x = correlated_inputs(2048, 128, seed=5)
    h = hessian(x)
    scheme = QuantScheme(3, 32, True)
    codes, scales, zeros = gptq_quantize(w, h, scheme, GPTQConfig(act_order=True))
    assert codes.shape == (64, 128) and scales.shape == (64, 4)
    # static groups: the scales are those of the unquantized weight's natural groups
    _, rtn_scales, _ = quantize_weight(w, scheme)
    assert torch.equal(scales, rtn_scales)
    q = dequantize_weight(codes, scales, zeros)
    q_rtn = dequantize_weight(*quantize_weight(w, scheme))
    assert output_error(w, q, h) < output_error(w, q_rtn, h)


def test_gptq_is_deterministic():
    g = torch.Generator().manual_seed(6)
    w = torch.randn(32, 64, generator=g)
    h = hessian(correlated_inputs(512, 64, seed=7))
    a = gptq_quantize(w, h, QuantScheme(4, 32, False))
    b = gptq_quantize(w, h, QuantScheme(4, 32, False))
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_dead_input_channels_are_rounded_not_zeroed():
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(8))
    x = correlated_inputs(256, 64, seed=9)
    x[:, :5] = 0  # never excited during calibration
    codes, scales, zeros = gptq_quantize(w, hessian(x), QuantScheme(4, 32, True))
    q = dequantize_weight(codes, scales, zeros)
    assert (q[:, :5] != 0).float().mean() > 0.8
