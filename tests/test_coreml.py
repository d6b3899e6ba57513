"""The Core ML target: conversion, our weights bit for bit, the stateful interface, and the saved ML
Program evaluated against the torch model (Linux); Core ML itself where it exists (macOS)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("coremltools")

from edgequant.compress.quantize import quantize  # noqa: E402
from edgequant.compress.scheme import QuantScheme  # noqa: E402
from edgequant.errors import EdgequantError, TargetError  # noqa: E402

ON_MAC = sys.platform == "darwin"
requires_macos = pytest.mark.skipif(not ON_MAC, reason="Core ML prediction exists on macOS only (Linux checks use the ML Program evaluator)")

SCHEMES = {
    "int4-g32-sym": QuantScheme(4, 32, True),
    "int4-g32-asym": QuantScheme(4, 32, False),
    "int8-channel-sym": QuantScheme(8, -1, True),
    "int3-g64-asym": QuantScheme(3, 64, False),
}
MAX_SEQ = 48


@pytest.fixture(scope="module")
def qdirs(tiny_llama, tmp_path_factory):
    root = tmp_path_factory.mktemp("coreml-q")
    out = {}
    for name, scheme in SCHEMES.items():
        quantize(tiny_llama, root / name, method="rtn", scheme=scheme, calib="builtin:milton", samples=2, seq_len=32, progress=False)
        out[name] = root / name
    return out


@pytest.fixture(scope="module")
def packages(qdirs, tmp_path_factory):
    """One package per scheme, written through the export dispatcher (atomic write, tokenizer sidecar)."""
    from edgequant.export.api import export

    root = tmp_path_factory.mktemp("coreml-pkg")
    out = {}
    for name, q in qdirs.items():
        res = export(q, "coreml", root / f"{name}.mlpackage", max_seq_len=MAX_SEQ)
        out[name] = (Path(res.out), res)
    return out


def _decoder(qdir, max_seq_len=MAX_SEQ):
    from edgequant.export.coreml import decoder_for
    from edgequant.models.loading import load_model

    return decoder_for(load_model(qdir), max_seq_len)


# ------------------------------------------------------------------------------------------ conversion


def test_package_interface_and_metadata(packages):
    from edgequant.targets.coreml import package_summary

    path, res = packages["int4-g32-sym"]
    assert path.is_dir() and (path / "Manifest.json").is_file()
    assert path.with_suffix(".tokenizer").is_dir()  # the runner's tokenizer beside the package
    s = package_summary(path)
    assert s["inputs"]["tokens"] == {"shape": [1, 1], "range": [(1, 1), (1, MAX_SEQ)], "dtype": "INT32"}
    assert s["inputs"]["start_pos"]["shape"] == [1] and s["inputs"]["start_pos"]["dtype"] == "INT32"
    assert list(s["outputs"]) == ["logits"] and s["outputs"]["logits"]["dtype"] == "FLOAT16"
    # the static KV cache as Core ML state: [1, n_kv_heads=2, max_seq, head_dim=16] float16 per layer
    assert s["states"] == {f"{kv}_cache_{i}": {"shape": [1, 2, MAX_SEQ, 16], "dtype": "FLOAT16"} for i in range(2) for kv in "kv"}
    md = s["metadata"]
    assert md["vocab_size"] == "2048" and md["max_seq_len"] == str(MAX_SEQ) and md["bos_id"] == "1" and md["eos_ids"] == "[2]"
    assert s["spec_version"] >= 9  # iOS 18 / macOS 15
    d = res.details
    assert d["stored_tensors"] == {"int4": 14, "float16": 1} and d["tied_embedding"] and d["verified_weights"] == 16


def test_program_uses_blockwise_constexpr_weights(packages):
    from edgequant.export.mil_eval import MILProgram

    prog = MILProgram(packages["int4-g32-asym"][0])
    types = {op.op_type for op in prog.ops()}
    assert {"constexpr_blockwise_shift_scale", "read_state", "coreml_update_state", "slice_update", "scaled_dot_product_attention"} <= types
    linears = prog.ops("linear")
    assert len(linears) == 15
    producers = [op.inputs["weight"].op.op_type for op in linears]
    assert producers.count("constexpr_blockwise_shift_scale") == 14  # every quantized linear
    assert producers.count("const") == 1  # lm_head: the float embedding table, shared
    assert linears[-1].inputs["weight"] is prog.ops("gather")[0].inputs["x"]  # tied: stored once


# ------------------------------------------------------------------------------------------ weights


@pytest.mark.parametrize("name,dtype,offset", [
    ("int4-g32-sym", "int4", False), ("int4-g32-asym", "uint4", True), ("int8-channel-sym", "int8", False), ("int3-g64-asym", "uint4", True),
])
def test_weights_round_trip_exactly(packages, qdirs, name, dtype, offset):
    """Every constexpr weight read back from the saved package holds our codes, zero points and float16
    scales bit for bit, and decompresses to our weight (rounded once to float16)."""
    from edgequant.export.coreml import verify_package, weight_var_name
    from edgequant.export.mil_eval import MILProgram, decompress_blockwise

    lm, names = _decoder(qdirs[name])
    report = verify_package(packages[name][0], lm, names)
    assert report["problems"] == [] and report["weights_checked"] == 16 and report["blockwise_weights"] == 14
    # and by hand for one layer: Core ML's scale * (data - offset) against (codes - zeros) * scales
    q = lm.layers[1].down_proj
    w = MILProgram(packages[name][0]).constexpr_weights()[weight_var_name("model.layers.1.mlp.down_proj")]
    assert w["data_dtype"] == dtype and (w["offset"] is not None) == offset
    assert np.array_equal(w["scale"].view(np.uint16), q.scales.numpy().view(np.uint16))
    if offset:
        assert np.array_equal(w["data"].astype(np.int64), q.codes.numpy().astype(np.int64))
        assert np.array_equal(w["offset"].astype(np.int64), q.zeros.numpy().astype(np.int64))
    else:
        assert np.array_equal(w["data"].astype(np.int64), q.codes.numpy().astype(np.int64) - (1 << (q.scheme.bits - 1)))
    dense = decompress_blockwise(w["data"], w["scale"], w["offset"])
    assert dense.dtype == np.float16
    assert torch.equal(torch.from_numpy(dense), q.weight.half())
    assert torch.allclose(torch.from_numpy(dense).float(), q.weight, rtol=2**-11, atol=0)


def test_verify_catches_other_weights(packages, qdirs):
    from edgequant.export.coreml import verify_package

    lm, names = _decoder(qdirs["int4-g32-asym"])
    report = verify_package(packages["int4-g32-sym"][0], lm, names)
    assert not report["exact"]
    assert any("codes differ" in p or "data type" in p for p in report["problems"])


def test_float16_baseline_package(qdirs, packages, tmp_path):
    from edgequant._io import dir_size_mb
    from edgequant.export.coreml import export_coreml
    from edgequant.export.mil_eval import MILProgram
    from edgequant.models.loading import load_model

    out = tmp_path / "f16.mlpackage"
    d = export_coreml(load_model(qdirs["int4-g32-sym"]), out, max_seq_len=MAX_SEQ, weights="float16")
    assert d["stored_tensors"] == {"float16": 15} and d["verified_weights"] == 16
    assert not MILProgram(out).ops("constexpr_blockwise_shift_scale")
    # the 14 quantized linears hold 4 bits (+ a float16 scale per 32) instead of 16
    blob = lambda p: (p / "Data/com.apple.CoreML/weights/weight.bin").stat().st_size  # noqa: E731
    assert blob(packages["int4-g32-sym"][0]) < blob(out) - 0.7 * 14 * (64 * 64 * 2)
    assert dir_size_mb(out) > dir_size_mb(packages["int4-g32-sym"][0])


# ------------------------------------------------------------------------------------------ evaluator vs torch


def _torch_logits(qdir, tokens):
    from edgequant.targets.torch_runtime import TorchRuntime

    ref = TorchRuntime(qdir, max_seq_len=MAX_SEQ)
    return ref.forward(tokens, 0)


@pytest.mark.parametrize("name", ["int4-g32-sym", "int4-g32-asym", "int8-channel-sym"])
def test_evaluator_matches_torch_prefill_and_decode(packages, qdirs, name):
    """The saved program, run by the evaluator in float16, against the float32 torch model: prefill in
    uneven chunks, then decode one token at a time through the state."""
    from edgequant.targets.coreml import MILRuntime

    rt = MILRuntime(packages[name][0])
    assert rt.meta.target == "coreml-mil-eval" and rt.meta.max_seq_len == MAX_SEQ
    torch.manual_seed(1)
    toks = torch.randint(3, rt.meta.vocab_size, (40,))
    ref = _torch_logits(qdirs[name], toks)
    got = torch.cat([rt.forward(toks[:17], 0), rt.forward(toks[17:30], 17)] + [rt.forward(toks[i : i + 1], i) for i in range(30, 40)])
    assert got.shape == ref.shape and got.dtype == torch.float32
    err = (got - ref).abs().max().item()
    assert err < 2e-2 * max(1.0, ref.abs().max().item()), err
    assert torch.equal(got.argmax(-1), ref.argmax(-1))
    # a fresh cache gives the same numbers again; a decode at the wrong position does not
    rt.reset()
    again = rt.prefill(toks[:30], 0)
    assert torch.equal(again, got[:30])
    wrong = rt.forward(toks[30:31], 31)  # skips slot 30: it attends to an empty (zero) key
    assert (wrong - ref[30]).abs().max().item() > 10 * err


def test_state_is_the_cache(packages):
    """Decode must read the keys/values the earlier call wrote: with the state reset in between, the
    logits change; the written slots hold the new keys and the rest stay zero."""
    from edgequant.targets.coreml import MILRuntime

    rt = MILRuntime(packages["int4-g32-sym"][0])
    toks = torch.arange(5, 15)
    rt.forward(toks[:9], 0)
    k0 = rt.state["k_cache_0"]
    assert k0.dtype == torch.float16 and k0[:, :, :9].abs().sum() > 0 and k0[:, :, 9:].abs().sum() == 0
    with_cache = rt.forward(toks[9:], 9)
    rt.reset()
    without = rt.forward(toks[9:], 9)
    assert (with_cache - without).abs().max().item() > 1e-3


def test_evaluator_ops_agree_with_coremltools_reference():
    """Each op the evaluator implements, on random inputs, against coremltools' own value inference of
    the same op (its numpy reference of the MIL specification)."""
    ct = pytest.importorskip("coremltools")
    from coremltools.converters.mil import Builder as mb

    from edgequant.export.mil_eval import MILProgram, op_handlers
    from coremltools.converters.mil.mil import types

    rng = np.random.default_rng(0)
    x4 = rng.standard_normal((1, 3, 6, 8)).astype(np.float32)
    handlers = op_handlers()
    cases = []

    @mb.program(input_specs=[], opset_version=ct.target.iOS18)
    def prog():
        cases.append(mb.slice_by_index(x=x4, begin=[0, 1, 2, 0], end=[1, 3, 5, 4], begin_mask=[True, False, False, True], end_mask=[True, True, False, False]))
        cases.append(mb.slice_by_index(x=x4, begin=[0, 1, 0, 2], end=[1, 2, 6, 8], squeeze_mask=[True, True, False, False], stride=[1, 1, 2, 3]))
        cases.append(mb.slice_update(x=x4, update=np.ones((1, 3, 2, 8), np.float32), begin=[0, 0, 3, 0], end=[1, 3, 5, 8]))
        cases.append(mb.gather(x=x4[0, 0], indices=np.array([[5, 0], [-1, 2]], np.int32), axis=0))
        cases.append(mb.tile(x=x4[0, 0], reps=[3, 1]))
        cases.append(mb.reshape(x=x4, shape=[1, 3, -1, 4]))
        cases.append(mb.reshape(x=x4, shape=[0, -1, 8]))
        cases.append(mb.transpose(x=x4, perm=[0, 2, 1, 3]))
        cases.append(mb.concat(values=[x4, x4 * 2], axis=-1))
        cases.append(mb.expand_dims(x=x4[0, 0], axes=[0, 1]))
        cases.append(mb.squeeze(x=x4[:, :1], axes=[0, 1]))
        cases.append(mb.range_1d(start=3, end=11, step=2))
        cases.append(mb.reduce_mean(x=x4, axes=[-1], keep_dims=True))
        cases.append(mb.rsqrt(x=np.abs(x4), epsilon=1e-5))
        cases.append(mb.linear(x=x4, weight=rng.standard_normal((5, 8)).astype(np.float32), bias=np.arange(5, dtype=np.float32)))
        cases.append(mb.silu(x=x4))
        cases.append(mb.select(cond=x4 > 0, a=x4, b=np.zeros_like(x4)))
        cases.append(mb.less_equal(x=np.arange(6, dtype=np.int32)[None], y=np.arange(4, dtype=np.int32)[:, None] + 1))
        cases.append(mb.cast(x=x4, dtype="fp16"))
        mask = np.where(rng.random((6, 6)) > 0.3, 0.0, -3e4).astype(np.float32)
        cases.append(mb.scaled_dot_product_attention(query=x4, key=x4[:, :, ::-1].copy(), value=x4 * 0.5, attn_mask=mask))
        data = rng.integers(-8, 8, (4, 64)).astype(types.np_int4_dtype)
        scale = rng.random((4, 2)).astype(np.float16)
        cases.append(mb.constexpr_blockwise_shift_scale(data=data, scale=scale))
        udata = rng.integers(0, 16, (4, 64)).astype(types.np_uint4_dtype)
        off = rng.integers(0, 16, (4, 2)).astype(types.np_uint4_dtype)
        cases.append(mb.constexpr_blockwise_shift_scale(data=udata, scale=scale, offset=off))
        return mb.identity(x=x4)

    assert len(cases) >= 20
    for var in cases:
        op = var.op
        ref = op.materialized_val_inference() if op.op_type.startswith("constexpr_") else var.val
        if op.op_type == "silu":  # coremltools has no value inference for silu
            ref = x4 / (1 + np.exp(-x4))
        assert ref is not None, op.op_type
        def arg(v):
            if isinstance(v, (list, tuple)):
                return [arg(x) for x in v]
            return v.val if isinstance(v.val, str) else torch.from_numpy(np.ascontiguousarray(np.asarray(v.val)))

        args = {k: arg(v) for k, v in op.inputs.items()}
        got = MILProgram._typed(handlers[op.op_type](op, args, {}), var, op)
        np.testing.assert_allclose(got.numpy().astype(np.float64), np.asarray(ref).astype(np.float64), rtol=1e-5, atol=1e-5, err_msg=op.op_type)


# ------------------------------------------------------------------------------------------ runtimes and CLI


@pytest.mark.skipif(ON_MAC, reason="on macOS CoreMLRuntime runs the package")
def test_coreml_runtime_off_macos_names_the_evaluator(packages):
    from edgequant.targets.coreml import CoreMLRuntime, MILRuntime
    from edgequant.targets.registry import open_runtime

    with pytest.raises(TargetError, match="macOS") as e:
        CoreMLRuntime(packages["int4-g32-sym"][0], threads=1)
    assert "MILRuntime" in str(e.value)
    assert isinstance(open_runtime(packages["int4-g32-sym"][0], threads=1), MILRuntime)


@requires_macos
@pytest.mark.parametrize("name", ["int4-g32-sym", "int4-g32-asym"])
def test_coreml_runtime_matches_evaluator_and_torch(packages, qdirs, name):
    from edgequant.targets.coreml import CoreMLRuntime, MILRuntime

    rt = CoreMLRuntime(packages[name][0], threads=1, compute_units="CPU_ONLY")
    ev = MILRuntime(packages[name][0])
    toks = torch.randint(3, rt.meta.vocab_size, (24,), generator=torch.Generator().manual_seed(2))
    got = torch.cat([rt.forward(toks[:20], 0)] + [rt.forward(toks[i : i + 1], i) for i in range(20, 24)])
    mine = ev.prefill(toks)
    ref = _torch_logits(qdirs[name], toks)
    assert torch.equal(got.argmax(-1), ref.argmax(-1))
    assert (got - mine).abs().max().item() < 2e-2 * max(1.0, ref.abs().max().item())


@pytest.mark.slow  # two CLI processes, each importing coremltools and torch (about a minute)
def test_cli_check_and_generate_through_the_package(packages, qdirs):
    from conftest import run_cli

    pkg = packages["int4-g32-sym"][0]
    import json

    code, out, err = run_cli("check", pkg, "--ref", qdirs["int4-g32-sym"], "--text", "builtin:britannica", "--seq-len", "32", "--max-tokens", "64", "--json")
    assert code == 0, err
    d = json.loads(out[out.index("{"):])
    assert d["target"] == ("coreml" if ON_MAC else "coreml-mil-eval")
    assert d["tokens"] > 0 and d["top1"] >= 0.99 and d["kl"] < 1e-3
    code, out, err = run_cli("generate", pkg, "--prompt", "To be", "--raw", "--max-new-tokens", "5")
    assert code == 0, err


def test_export_errors(qdirs, tmp_path):
    from edgequant.export.api import export

    with pytest.raises(EdgequantError, match="blockwise"):
        export(qdirs["int4-g32-sym"], "coreml", tmp_path / "m.mlpackage", scheme="8da4w")
    with pytest.raises(EdgequantError, match=".mlpackage"):
        export(qdirs["int4-g32-sym"], "coreml", tmp_path / "m.pte")
    with pytest.raises(TargetError, match="weights"):
        export(qdirs["int4-g32-sym"], "coreml", tmp_path / "m.mlpackage", weights="int2")
    assert not (tmp_path / "m.mlpackage").exists()


def test_evaluator_refuses_a_window_past_max_seq(packages):
    from edgequant.targets.coreml import MILRuntime

    rt = MILRuntime(packages["int4-g32-sym"][0])
    with pytest.raises(EdgequantError, match="max sequence length"):
        rt.forward(torch.arange(10), MAX_SEQ - 5)


def test_quantized_embedding_and_untied_head_share_one_table(qdirs, tmp_path):
    """A checkpoint whose embedding is quantized and whose lm_head is the same codes untied: the package
    stores one block-wise table (gathered by the embedding, multiplied by the head) and still computes
    what torch does."""
    from edgequant.compress.qlinear import QuantizedEmbedding, QuantizedLinear, set_submodule
    from edgequant.export.coreml import decoder_for, export_coreml, verify_package
    from edgequant.export.mil_eval import MILProgram
    from edgequant.models.loading import load_model
    from edgequant.targets.coreml import MILRuntime

    loaded = load_model(qdirs["int4-g32-asym"])
    g = torch.Generator().manual_seed(3)
    vocab, dim = loaded.model.get_submodule(loaded.adapter.embed).weight.shape
    codes = torch.randint(0, 16, (vocab, dim), generator=g, dtype=torch.uint8)
    scales = (torch.rand(vocab, dim // 32, generator=g) * 0.02 + 0.005).half()
    zeros = torch.randint(4, 12, (vocab, dim // 32), generator=g, dtype=torch.uint8)
    scheme = QuantScheme(4, 32, False)
    set_submodule(loaded.model, loaded.adapter.embed, QuantizedEmbedding(codes, scales, zeros, scheme))
    set_submodule(loaded.model, loaded.adapter.lm_head, QuantizedLinear(codes.clone(), scales.clone(), zeros.clone(), scheme))
    out = tmp_path / "qe.mlpackage"
    d = export_coreml(loaded, out, max_seq_len=MAX_SEQ)
    assert d["stored_tensors"] == {"uint4": 15} and d["tied_embedding"]
    prog = MILProgram(out)
    assert len(prog.ops("constexpr_blockwise_shift_scale")) == 15
    assert prog.ops("gather")[0].inputs["x"].op.op_type == "constexpr_blockwise_shift_scale"
    lm, names = decoder_for(loaded, MAX_SEQ)
    assert verify_package(out, lm, names)["problems"] == []
    toks = torch.randint(3, vocab, (12,), generator=g)
    lm.cache.float()
    with torch.no_grad():
        want = lm(toks[None], torch.arange(12))[0]
    got = MILRuntime(out).prefill(toks)
    assert torch.equal(got.argmax(-1), want.argmax(-1))
    assert (got - want).abs().max().item() < 2e-2 * max(1.0, want.abs().max().item())


@pytest.mark.slow  # SmolLM2-135M: conversion and the evaluator over 512 tokens take minutes on 2 cores
def test_smollm2_package_converts_exactly_and_agrees_with_torch(tmp_path, smollm2_rtn_g32):
    SMOLLM2_Q = smollm2_rtn_g32
    from edgequant.eval.evaluate import text_windows
    from edgequant.export.api import export
    from edgequant.models.loading import load_tokenizer
    from edgequant.targets.coreml import MILRuntime
    from edgequant.targets.torch_runtime import TorchRuntime

    res = export(SMOLLM2_Q, "coreml", tmp_path / "smollm2.mlpackage", max_seq_len=512)
    d = res.details
    assert d["stored_tensors"] == {"int4": 210, "float16": 1} and d["verified_weights"] == 212  # verified on export
    assert res.size_mb < 130  # 4-bit linears (+ scales) and the float16 embedding, stored once
    rt = MILRuntime(Path(res.out))
    ref = TorchRuntime(SMOLLM2_Q, max_seq_len=512)
    w = text_windows(load_tokenizer(SMOLLM2_Q), "builtin:britannica", 512, 512)[0]
    got = torch.cat([rt.forward(w[:500], 0)] + [rt.forward(w[i : i + 1], i) for i in range(500, 512)])
    want = ref.forward(w, 0)
    assert (got.argmax(-1) == want.argmax(-1)).float().mean().item() >= 0.99
    lg, lw = torch.log_softmax(got, -1), torch.log_softmax(want, -1)
    assert (lw.exp() * (lw - lg)).sum(-1).mean().item() < 1e-3
