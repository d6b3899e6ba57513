import hashlib
import json

import pytest
import torch

from edgequant.compress.checkpoint import INFO_FILE, WEIGHTS_FILE
from edgequant.compress.gptq import GPTQConfig
from edgequant.compress.grid import dequantize_weight, unpack_codes
from edgequant.compress.qlinear import QuantizedLinear
from edgequant.compress.quantize import quantize
from edgequant.compress.scheme import QuantScheme
from edgequant.models.loading import load_model


def _digest(d):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}


@pytest.fixture(scope="module")
def gptq_dir(tiny_llama, tmp_path_factory):
    out = tmp_path_factory.mktemp("q") / "tiny-gptq"
    quantize(tiny_llama, out, method="gptq", scheme=QuantScheme(4, 32, False), calib="builtin:shakespeare", samples=8, seq_len=64, progress=False)
    return out


def test_checkpoint_layout_and_record(gptq_dir):
    from safetensors.torch import load_file

    info = json.loads((gptq_dir / INFO_FILE).read_text())
    assert info["format"] == "edgequant-quantized" and info["method"] == "gptq"
    assert info["calibration"]["samples"] == 8 and info["calibration"]["sources"] == ["builtin:shakespeare"]
    assert len(info["modules"]) == 14  # 2 blocks x 7 linears
    name = "model.layers.0.mlp.down_proj"
    assert info["modules"][name] == {"kind": "linear", "bits": 4, "group_size": 32, "symmetric": False, "in_features": 128, "out_features": 64}
    assert set(info["errors"][name]) >= {"gptq_calib", "rtn_calib", "chosen"}
    t = load_file(str(gptq_dir / WEIGHTS_FILE))
    assert t[f"{name}.qweight"].dtype == torch.uint8 and t[f"{name}.qweight"].shape == (64, 64)
    assert t[f"{name}.scales"].dtype == torch.float16 and t[f"{name}.scales"].shape == (64, 4)
    assert t[f"{name}.qzeros"].shape == (64, 4)
    assert f"{name}.weight" not in t
    assert "lm_head.weight" not in t  # tied to the embedding
    for f in ("config.json", "tokenizer.json"):
        assert (gptq_dir / f).is_file()


def test_loaded_linears_compute_with_exactly_the_stored_weights(gptq_dir):
    from safetensors.torch import load_file

    t = load_file(str(gptq_dir / WEIGHTS_FILE))
    m = load_model(gptq_dir)
    assert m.is_quantized
    qlins = {n: mod for n, mod in m.model.named_modules() if isinstance(mod, QuantizedLinear)}
    assert len(qlins) == 14
    for name, mod in qlins.items():
        codes = unpack_codes(t[f"{name}.qweight"], 4, mod.in_features)
        w = dequantize_weight(codes, t[f"{name}.scales"], t[f"{name}.qzeros"])
        assert torch.equal(mod.weight, w)
        x = torch.randn(3, mod.in_features)
        assert torch.equal(mod(x), torch.nn.functional.linear(x, w))
    assert m.model.lm_head.weight is m.model.model.embed_tokens.weight


def test_same_inputs_and_seed_give_byte_identical_checkpoints(tiny_llama, gptq_dir, tmp_path):
    again = tmp_path / "again"
    quantize(tiny_llama, again, method="gptq", scheme=QuantScheme(4, 32, False), calib="builtin:shakespeare", samples=8, seq_len=64, progress=False)
    assert _digest(again) == _digest(gptq_dir)
    other_seed = tmp_path / "seed1"
    quantize(tiny_llama, other_seed, method="gptq", scheme=QuantScheme(4, 32, False), calib="builtin:shakespeare", samples=8, seq_len=64, seed=1, progress=False)
    assert _digest(other_seed)[WEIGHTS_FILE] != _digest(gptq_dir)[WEIGHTS_FILE]


def test_rtn_needs_no_calibration_and_act_order_runs(tiny_llama, tmp_path):
    r = quantize(tiny_llama, tmp_path / "rtn", method="rtn", scheme=QuantScheme(8, -1, True), progress=False)
    assert r.linears == 14 and r.chosen == {"rtn": 14}
    info = json.loads((tmp_path / "rtn" / INFO_FILE).read_text())
    assert info["calibration"] is None
    r = quantize(tiny_llama, tmp_path / "ao", scheme=QuantScheme(3, 64, True), gptq=GPTQConfig(act_order=True), calib="builtin:milton", samples=4, seq_len=32, progress=False)
    assert r.chosen == {"gptq": 14}


def test_guard_keeps_per_layer_the_lower_error_on_guard_text(tiny_llama, tmp_path):
    quantize(tiny_llama, tmp_path / "g", scheme=QuantScheme(3, 32, True), calib="builtin:pydoc", guard="builtin:shakespeare", samples=8, guard_samples=8, seq_len=64, progress=False)
    info = json.loads((tmp_path / "g" / INFO_FILE).read_text())
    for e in info["errors"].values():
        lower = "rtn" if e["rtn_guard"] < e["gptq_guard"] else "gptq"
        assert e["chosen"] == lower
