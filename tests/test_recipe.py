import json

import pytest
import torch

from conftest import run_cli, user_error_line
from edgequant.compress.qlinear import QuantizedEmbedding, QuantizedLinear
from edgequant.compress.quantize import quantize
from edgequant.compress.recipe import load_recipe, parse_recipe
from edgequant.compress.scheme import QuantScheme
from edgequant.errors import RecipeError
from edgequant.models.loading import load_model

RECIPE = """
method: rtn
default: {bits: 4, group_size: 32, symmetric: true}
overrides:
  - match: lm_head
    bits: 8
    group_size: -1
  - match: model.embed_tokens
    bits: 8
    group_size: 32
  - match: "re:model\\\\.layers\\\\.1\\\\.mlp\\\\.down_proj"
    bits: 8
  - match: "model.layers.0.self_attn.k_proj"
    float: true
"""


def test_recipe_resolution():
    r = parse_recipe({"default": {"bits": 4, "group_size": 32}, "overrides": [{"match": "*.down_proj", "bits": 8}, {"match": "lm_head", "bits": 8}]})
    res = r.resolve(["m.layers.0.mlp.down_proj", "m.layers.0.mlp.up_proj"], ["m.embed_tokens", "lm_head"])
    assert res["m.layers.0.mlp.down_proj"] == QuantScheme(8, 32, True)
    assert res["m.layers.0.mlp.up_proj"] == QuantScheme(4, 32, True)
    assert res["lm_head"] == QuantScheme(8, 32, True) and res["m.embed_tokens"] is None


@pytest.mark.parametrize(
    "data,needle",
    [
        ({"default": {"bits": 4}, "colour": 1}, "unknown key(s) colour"),
        ({"default": {"bits": 5}}, "bits=5"),
        ({"default": {"bits": 4, "groupsize": 32}}, "unknown key(s) groupsize"),
        ({"default": {"bits": 4}, "overrides": [{"bits": 8}]}, "needs a 'match'"),
        ({"default": {"bits": 4}, "overrides": [{"match": "x", "bits": 7}]}, "bits=7"),
        ({"default": {"bits": 4}, "overrides": [{"match": "re:(", "bits": 8}]}, "bad regular expression"),
    ],
)
def test_recipe_errors(data, needle):
    with pytest.raises(RecipeError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        parse_recipe(data)


def test_pattern_matching_nothing_is_an_error():
    r = parse_recipe({"default": {"bits": 4}, "overrides": [{"match": "*.nonexistent_proj", "bits": 8}]})
    with pytest.raises(RecipeError, match="matches no module"):
        r.resolve(["a.q_proj"], ["lm_head"])


def test_quantize_with_a_recipe_records_it_and_loads_back(tiny_llama, tmp_path):
    (tmp_path / "r.yaml").write_text(RECIPE)
    out = tmp_path / "q"
    r = quantize(tiny_llama, out, recipe=tmp_path / "r.yaml", progress=False)
    assert r.method == "rtn"
    info = json.loads((out / "quantization.json").read_text())
    assert info["recipe"]["overrides"][0] == {"match": "lm_head", "bits": 8, "group_size": -1}
    mods = info["modules"]
    assert mods["lm_head"]["bits"] == 8 and mods["model.embed_tokens"]["kind"] == "embedding"
    assert mods["model.layers.1.mlp.down_proj"]["bits"] == 8 and mods["model.layers.0.mlp.down_proj"]["bits"] == 4
    assert "model.layers.0.self_attn.k_proj" not in mods
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is False
    m = load_model(out)
    assert isinstance(m.model.lm_head, QuantizedLinear) and m.model.lm_head.scheme.bits == 8
    assert isinstance(m.model.model.embed_tokens, QuantizedEmbedding)
    assert isinstance(m.model.model.layers[0].self_attn.k_proj, torch.nn.Linear)
    ids = torch.randint(0, 2000, (1, 16))
    assert torch.isfinite(m.model(input_ids=ids).logits).all()


def test_recipe_cli_errors_exit_2_before_any_work(tiny_llama, tmp_path):
    (tmp_path / "bad.yaml").write_text("default: {bits: 4, group_size: 32}\noverrides:\n  - match: '*.no_such'\n    bits: 8\n")
    code, _, stderr = run_cli("quantize", tiny_llama, "--recipe", tmp_path / "bad.yaml", "--out", tmp_path / "q")
    assert code == 2 and "matches no module" in user_error_line(stderr)
    code, _, stderr = run_cli("quantize", tiny_llama, "--recipe", tmp_path / "missing.yaml", "--out", tmp_path / "q")
    assert code == 2 and "recipe not found" in user_error_line(stderr)
    (tmp_path / "g.yaml").write_text("default: {bits: 4, group_size: 128}\n")
    code, _, stderr = run_cli("quantize", tiny_llama, "--recipe", tmp_path / "g.yaml", "--out", tmp_path / "q")
    assert code == 2 and "does not divide" in user_error_line(stderr)
    assert not (tmp_path / "q").exists()


@pytest.mark.parametrize("method", ["awq", "awq+gptq"])
def test_awq_methods_run_and_record_alpha(tiny_llama, tmp_path, method):
    out = tmp_path / method.replace("+", "_")
    quantize(tiny_llama, out, method=method, scheme=QuantScheme(4, 32, False), calib="builtin:shakespeare", samples=8, seq_len=64, progress=False)
    info = json.loads((out / "quantization.json").read_text())
    e = info["errors"]["model.layers.0.self_attn.q_proj"]
    assert "awq_alpha" in e and 0 <= e["awq_alpha"] < 1
    assert info["errors"]["model.layers.0.self_attn.o_proj"]["awq_alpha"] is None  # GQA: v_proj narrower than o_proj
    assert info["settings"]["awq"]["grid"] == 20
    m = load_model(out)
    assert torch.isfinite(m.model(input_ids=torch.randint(0, 2000, (1, 16))).logits).all()


def test_tied_embedding_and_head_with_one_scheme_stay_one_tensor(tiny_llama, tmp_path):
    from safetensors import safe_open

    (tmp_path / "r.yaml").write_text(
        "default: {bits: 4, group_size: 32}\noverrides:\n  - {match: lm_head, bits: 4}\n  - {match: model.embed_tokens, bits: 4}\n"
    )
    out = tmp_path / "q"
    quantize(tiny_llama, out, method="gptq", recipe=tmp_path / "r.yaml", calib="builtin:milton", samples=4, seq_len=32, progress=False)
    info = json.loads((out / "quantization.json").read_text())
    assert info["modules"]["model.embed_tokens"]["tied_to"] == "lm_head"
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is True
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "lm_head.qweight" in keys and not any(k.startswith("model.embed_tokens") for k in keys)
    m = load_model(out)
    assert m.model.model.embed_tokens.codes is m.model.lm_head.codes
    ids = torch.randint(0, 2000, (1, 12))
    assert torch.equal(m.model.model.embed_tokens(ids), m.model.lm_head.weight[ids])
    from edgequant.compress.sensitivity import estimate_checkpoint_bytes

    loaded = load_model(tiny_llama)
    plan = {n: QuantScheme(4, 32, True) for n in loaded.adapter.all_linear_names(loaded.model) + ["lm_head", "model.embed_tokens"]}
    total = 0
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        for k in f.keys():
            t = f.get_tensor(k)
            total += t.numel() * t.element_size()
    assert estimate_checkpoint_bytes(loaded, plan) == total
