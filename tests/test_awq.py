import pytest
import torch
from torch import nn

from edgequant.compress.awq import AWQConfig, fold_scale, search_clip, search_scale
from edgequant.compress.grid import dequantize_weight, quantize_weight
from edgequant.compress.scheme import QuantScheme
from edgequant.models.loading import load_model


def test_folding_scales_leaves_the_float_model_unchanged(tiny_llama):
    m = load_model(tiny_llama)
    ids = torch.randint(0, 2000, (2, 40), generator=torch.Generator().manual_seed(0))
    before = m.model(input_ids=ids).logits
    g = torch.Generator().manual_seed(1)
    for block in m.adapter.block_list(m.model):
        for group in m.adapter.groups:
            prev = block.get_submodule(group.prev)
            linears = [block.get_submodule(n) for n in group.linears]
            if isinstance(prev, nn.Linear) and prev.out_features != linears[0].in_features:
                continue  # grouped-query attention: v_proj is narrower than o_proj's input
            s = torch.rand(linears[0].in_features, generator=g) * 3 + 0.2
            fold_scale(prev, linears, s)
    after = m.model(input_ids=ids).logits
    assert torch.allclose(before, after, atol=1e-4, rtol=1e-4)
    assert not torch.equal(before, after)  # the weights really changed


def test_scale_search_picks_positive_alpha_with_outlier_channels():
    g = torch.Generator().manual_seed(2)
    lin = nn.Linear(128, 64, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(64, 128, generator=g) * 0.05)
    x = torch.randn(8, 32, 128, generator=g)
    x[..., :4] *= 40.0  # a few channels carry large activations, as in LLMs
    alpha, s, losses = search_scale(lin, [((x,), {})], [lin], [QuantScheme(4, 64, True)], x.abs().reshape(-1, 128).mean(0), grid=20)
    assert alpha > 0
    assert min(losses) < losses[0] * 0.9  # better than no scaling (alpha = 0)
    assert s[:4].mean() > s[4:].mean()  # the loud channels are scaled up
    assert torch.equal(lin.weight, lin.weight)  # and the search restored the weights


def test_clip_search_lowers_the_output_error():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(32, 128, generator=g) * 0.02
    w[:, ::17] *= 8  # heavy-tailed weights: clipping pays
    x = torch.randn(512, 128, generator=g)
    scheme = QuantScheme(3, 64, True)
    clipped = search_clip(w, x, scheme, AWQConfig())
    q_plain = dequantize_weight(*quantize_weight(w, scheme))
    q_clip = dequantize_weight(*quantize_weight(clipped, scheme))
    err = lambda q: float(((x @ (w - q).T) ** 2).mean())
    assert err(q_clip) < err(q_plain)
