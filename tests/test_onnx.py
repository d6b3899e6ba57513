"""The ONNX target: our codes and scales in MatMulNBits / DequantizeLinear nodes, bit for bit, and the
artifact running through ONNX Runtime in step with the torch reference."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT, run_cli, user_error_line

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from onnx import numpy_helper  # noqa: E402

from edgequant.compress.checkpoint import read_info, read_tensors  # noqa: E402
from edgequant.compress.grid import pack_codes, unpack_codes  # noqa: E402
from edgequant.compress.scheme import QuantScheme  # noqa: E402

MAX_SEQ = 96


def _quantize(src, out, scheme):
    from edgequant.compress.quantize import quantize

    quantize(src, out, method="rtn", scheme=scheme, calib="builtin:milton", samples=4, seq_len=32, progress=False)
    return out


@pytest.fixture(scope="module")
def qdirs(tiny_llama, tmp_path_factory):
    base = tmp_path_factory.mktemp("onnx-q")
    return {
        "sym": _quantize(tiny_llama, base / "sym", QuantScheme(4, 32, True)),
        "asym": _quantize(tiny_llama, base / "asym", QuantScheme(4, 32, False)),
    }


@pytest.fixture(scope="module")
def artifacts(qdirs, tmp_path_factory):
    """The four combinations, exported through the real dispatcher (tokenizer included)."""
    from edgequant.export.api import export

    base = tmp_path_factory.mktemp("onnx-art")
    out = {}
    for sym in ("sym", "asym"):
        for scheme in ("matmulnbits", "qdq"):
            r = export(qdirs[sym], "onnx", base / f"{sym}-{scheme}", scheme=scheme, max_seq_len=MAX_SEQ)
            out[(sym, scheme)] = (base / f"{sym}-{scheme}", r)
    return out


def _initializers(path):
    m = onnx.load(str(path / "model.onnx"))
    return m, {t.name: t for t in m.graph.initializer}


def _nodes(m, op):
    return [n for n in m.graph.node if n.op_type == op]


def _attrs(node):
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


@pytest.mark.parametrize("sym", ["sym", "asym"])
def test_matmulnbits_holds_our_packed_codes_scales_and_zeros(artifacts, qdirs, sym):
    path, result = artifacts[(sym, "matmulnbits")]
    info, tensors = read_info(qdirs[sym]), read_tensors(qdirs[sym])
    m, inits = _initializers(path)
    nodes = _nodes(m, "MatMulNBits")
    assert len(nodes) == len([k for k, v in info.modules.items() if v.kind == "linear"]) == 14
    assert not _nodes(m, "DequantizeLinear")
    assert not [n for n in _nodes(m, "MatMul") if n.input[1] in inits]  # no float weight anywhere
    assert {n.domain for n in nodes} == {"com.microsoft"}
    for n in nodes:
        name = n.name.rsplit("/", 1)[0]
        mq = info.modules[name]
        a = _attrs(n)
        assert (a["K"], a["N"], a["bits"], a["block_size"]) == (mq.in_features, mq.out_features, 4, 32)
        b = numpy_helper.to_array(inits[n.input[1]])
        assert b.dtype == np.uint8 and b.shape == (mq.out_features, mq.in_features // 32, 16)
        # the bytes of the checkpoint's own packed rows, unchanged
        assert np.array_equal(b.reshape(mq.out_features, -1), tensors[f"{name}.qweight"].numpy())
        scales = numpy_helper.to_array(inits[n.input[2]])
        assert scales.dtype == np.float32
        assert np.array_equal(scales, tensors[f"{name}.scales"].float().numpy())
        if sym == "sym":
            assert len(n.input) == 3  # the implicit zero point 8 is ours
        else:
            zp = numpy_helper.to_array(inits[n.input[3]])
            codes = unpack_codes(torch.from_numpy(zp.copy()), 4, mq.in_features // 32)
            assert torch.equal(codes, tensors[f"{name}.qzeros"])
    assert result.details["nodes"]["com.microsoft.MatMulNBits"] == 14


@pytest.mark.parametrize("sym", ["sym", "asym"])
def test_dequantizelinear_holds_our_codes(artifacts, qdirs, sym):
    path, _ = artifacts[(sym, "qdq")]
    info, tensors = read_info(qdirs[sym]), read_tensors(qdirs[sym])
    m, inits = _initializers(path)
    assert m.opset_import[0].version == 21 or any(o.domain == "" and o.version == 21 for o in m.opset_import)
    assert all(o.domain != "com.microsoft" for o in m.opset_import)  # standard operators only
    nodes = _nodes(m, "DequantizeLinear")
    assert len(nodes) == 14 and len(_nodes(m, "MatMul")) >= 14
    for n in nodes:
        name = n.name.rsplit("/", 1)[0]
        mq = info.modules[name]
        a = _attrs(n)
        assert a == {"axis": 0, "block_size": 32}
        q = inits[n.input[0]]
        codes = unpack_codes(tensors[f"{name}.qweight"], 4, mq.in_features).numpy()  # [out, in]
        w = numpy_helper.to_array(q).astype(np.int16)  # stored [in, out]
        assert w.shape == (mq.in_features, mq.out_features)
        scales = numpy_helper.to_array(inits[n.input[1]])
        assert np.array_equal(scales, tensors[f"{name}.scales"].float().numpy().T)
        if sym == "sym":
            assert q.data_type == onnx.TensorProto.INT4 and len(n.input) == 2
            assert np.array_equal(w + 8, codes.T)
        else:
            assert q.data_type == onnx.TensorProto.UINT4
            assert np.array_equal(w, codes.T)
            zp = inits[n.input[2]]
            assert zp.data_type == onnx.TensorProto.UINT4
            assert np.array_equal(numpy_helper.to_array(zp).astype(np.uint8), tensors[f"{name}.qzeros"].numpy().T)


def test_tied_head_shares_the_embedding_initializer(artifacts):
    path, result = artifacts[("sym", "matmulnbits")]
    m, inits = _initializers(path)
    big = [t for t in m.graph.initializer if len(t.dims) == 2 and t.dims[0] > 1000]
    assert len(big) == 1, [t.name for t in big]  # one [vocab, hidden] table
    (gather,) = [n for n in _nodes(m, "Gather") if n.input[0] == big[0].name]
    (gemm,) = _nodes(m, "Gemm")
    assert gemm.input[1] == big[0].name and _attrs(gemm)["transB"] == 1
    assert result.details["tied_head"] is True


def test_io_layout_metadata_and_checker(artifacts):
    path, result = artifacts[("asym", "matmulnbits")]
    onnx.checker.check_model(str(path / "model.onnx"), full_check=True)
    m = onnx.load(str(path / "model.onnx"))
    ins = [i.name for i in m.graph.input]
    outs = [o.name for o in m.graph.output]
    assert ins[:3] == ["input_ids", "attention_mask", "position_ids"] and ins[3:5] == ["past_key_values.0.key", "past_key_values.0.value"]
    assert outs[:3] == ["logits", "present.0.key", "present.0.value"] and len(outs) == 1 + 2 * 2
    shape = [d.dim_param or d.dim_value for d in m.graph.input[3].type.tensor_type.shape.dim]
    assert isinstance(shape[0], str) and isinstance(shape[2], str) and shape[1] == 2 and shape[3] == 16  # dynamic batch and past
    meta = json.loads({p.key: p.value for p in m.metadata_props}["edgequant"])
    assert meta["target"] == "onnx" and meta["max_seq_len"] == MAX_SEQ and meta["n_layers"] == 2 and "asym" in meta["scheme"]
    genai = json.loads((path / "genai_config.json").read_text())
    assert genai["model"]["decoder"]["inputs"]["past_key_names"] == "past_key_values.%d.key"
    assert (path / "tokenizer_config.json").is_file()
    assert result.details["checked"] is True


@pytest.mark.parametrize("key", [("sym", "matmulnbits"), ("asym", "matmulnbits"), ("sym", "qdq"), ("asym", "qdq")])
def test_runtime_matches_the_torch_reference(artifacts, qdirs, key):
    from edgequant.targets.onnx import OnnxRuntime
    from edgequant.targets.torch_runtime import TorchRuntime

    ref = TorchRuntime(qdirs[key[0]], max_seq_len=MAX_SEQ)
    rt = OnnxRuntime(artifacts[key][0], threads=2)
    assert rt.meta.target == "onnx" and rt.meta.max_seq_len == MAX_SEQ
    toks = torch.randint(3, rt.meta.vocab_size, (40,), generator=torch.Generator().manual_seed(1))
    expected = ref.prefill(toks)
    got = torch.cat([rt.prefill(toks[:25]), rt.forward(toks[25:26], 25), rt.forward(toks[26:40], 26)])
    assert got.shape == expected.shape and got.dtype == torch.float32
    assert (got - expected).abs().max().item() < 1e-4
    assert torch.equal(got.argmax(-1), expected.argmax(-1))
    # restarting earlier trims the cache; reset starts over
    assert (rt.forward(toks[10:12], 10) - expected[10:12]).abs().max().item() < 1e-4
    rt.reset()
    assert (rt.forward(toks[:3], 0) - expected[:3]).abs().max().item() < 1e-4


def test_batched_call_with_left_padding(artifacts, qdirs):
    """The graph itself takes a batch: a left-padded row gives the logits of the unpadded sequence."""
    import onnxruntime as ort

    path, _ = artifacts[("sym", "matmulnbits")]
    s = ort.InferenceSession(str(path / "model.onnx"), providers=["CPUExecutionProvider"])
    ids = np.array([[5, 6, 7, 8, 9], [0, 0, 7, 8, 9]], dtype=np.int64)
    mask = np.array([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]], dtype=np.int64)
    pos = np.array([[0, 1, 2, 3, 4], [0, 0, 0, 1, 2]], dtype=np.int64)
    feeds = {"input_ids": ids, "attention_mask": mask, "position_ids": pos}
    for i in range(2):
        for k in ("key", "value"):
            feeds[f"past_key_values.{i}.{k}"] = np.zeros((2, 2, 0, 16), np.float32)
    logits = s.run(["logits"], feeds)[0]
    alone = s.run(["logits"], {**{k: v[1:, 2:] if k != "attention_mask" and not k.startswith("past") else v for k, v in feeds.items()},
                               "attention_mask": mask[1:, 2:], **{k: v[1:] for k, v in feeds.items() if k.startswith("past")}})[0]
    assert np.abs(logits[1, 2:] - alone[0]).max() < 1e-4


def test_loads_in_a_fresh_process(artifacts):
    path, _ = artifacts[("asym", "qdq")]
    code = (
        "import sys, torch; from edgequant.targets.registry import open_runtime;"
        f"rt = open_runtime(r'{path}', threads=1); print(int(rt.prefill(torch.tensor([1, 2, 3]))[-1].argmax()))"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().isdigit()


def test_generate_command_matches_torch(artifacts, qdirs):
    path, _ = artifacts[("sym", "matmulnbits")]
    args = ("--prompt", "To be or not", "--max-new-tokens", "12", "--raw", "--json")
    code, out, err = run_cli("generate", path, *args)
    assert code == 0, err
    onnx_gen = json.loads(out)
    code, out, err = run_cli("generate", qdirs["sym"], *args)
    assert code == 0, err
    torch_gen = json.loads(out)
    assert onnx_gen["new_tokens"] >= 1 and onnx_gen["text"] == torch_gen["text"]


def test_generate_with_a_thinking_budget(artifacts, qdirs):
    from edgequant.eval.generate import generate
    from edgequant.targets.onnx import OnnxRuntime
    from edgequant.targets.runtime import load_artifact_tokenizer
    from edgequant.targets.torch_runtime import TorchRuntime

    path, _ = artifacts[("asym", "qdq")]
    tok = load_artifact_tokenizer(path)
    kw = dict(max_new_tokens=12, think="on", think_budget=3)
    r = generate(OnnxRuntime(path, threads=1), tok, "Why?", **kw)
    ref = generate(TorchRuntime(qdirs["asym"], max_seq_len=MAX_SEQ), tok, "Why?", **kw)
    assert r.forced_think_end and r.thinking_tokens == 3
    assert (r.text, r.thinking_tokens, r.stop_reason) == (ref.text, ref.thinking_tokens, ref.stop_reason)


def test_check_command(artifacts, qdirs):
    path, _ = artifacts[("asym", "matmulnbits")]
    code, out, err = run_cli("check", path, "--ref", qdirs["asym"], "--text", "builtin:britannica", "--seq-len", "64", "--max-tokens", "256", "--json")
    assert code == 0, err
    d = json.loads(out)
    assert d["target"] == "onnx" and d["tokens"] >= 250 and d["top1"] >= 0.99 and d["kl"] < 1e-6


def test_profile_command_per_op(artifacts):
    path, _ = artifacts[("sym", "matmulnbits")]
    code, out, err = run_cli("profile", path, "--prompt-len", "16", "--gen", "4", "--runs", "1", "--warmup", "0", "--per-op", "--json")
    assert code == 0, err
    d = json.loads(out)
    assert d["target"] == "onnx" and d["decode_tok_s"] > 0 and d["prefill_tok_s"] > 0
    ops = {r["op"]: r for r in d["per_op"]}
    assert "MatMulNBits" in ops and ops["MatMulNBits"]["calls"] == 14 * 4  # 1 prefill + 3 decode steps, warm-up left out
    assert abs(sum(r["share"] for r in d["per_op"]) - 1) < 0.01


@pytest.mark.parametrize(
    "bits,group,sym",
    [
        (8, -1, True),
        pytest.param(8, 32, True, marks=pytest.mark.slow),
        pytest.param(2, 64, False, marks=pytest.mark.slow),
        pytest.param(4, -1, False, marks=pytest.mark.slow),
    ],
)
def test_other_matmulnbits_schemes(tiny_llama, tmp_path, bits, group, sym):
    """8- and 2-bit codes, and per-channel scales written as repeated blocks, give the same weights."""
    from edgequant.export.api import export
    from edgequant.targets.onnx import OnnxRuntime
    from edgequant.targets.torch_runtime import TorchRuntime

    q = _quantize(tiny_llama, tmp_path / "q", QuantScheme(bits, group, sym))
    export(q, "onnx", tmp_path / "o", max_seq_len=MAX_SEQ)
    m = onnx.load(str(tmp_path / "o" / "model.onnx"))
    (n, *_) = _nodes(m, "MatMulNBits")
    a = _attrs(n)
    assert a["bits"] == bits and a["block_size"] == (64 if group == -1 else group)
    toks = torch.arange(3, 35)
    got = OnnxRuntime(tmp_path / "o", threads=1).prefill(toks)
    expected = TorchRuntime(q, max_seq_len=MAX_SEQ).prefill(toks)
    assert (got - expected).abs().max().item() < 1e-4


@pytest.mark.slow
def test_per_channel_qdq_is_per_axis(tiny_llama, tmp_path):
    from edgequant.export.api import export
    from edgequant.targets.onnx import OnnxRuntime
    from edgequant.targets.torch_runtime import TorchRuntime

    q = _quantize(tiny_llama, tmp_path / "q", QuantScheme(8, -1, True))
    export(q, "onnx", tmp_path / "o", scheme="qdq", max_seq_len=MAX_SEQ)
    m = onnx.load(str(tmp_path / "o" / "model.onnx"))
    dq = _nodes(m, "DequantizeLinear")[0]
    assert _attrs(dq) == {"axis": 1}
    toks = torch.arange(3, 35)
    got = OnnxRuntime(tmp_path / "o", threads=1).prefill(toks)
    assert (got - TorchRuntime(q, max_seq_len=MAX_SEQ).prefill(toks)).abs().max().item() < 1e-4


@pytest.mark.parametrize(
    "bits,scheme,needle",
    [(3, "matmulnbits", "MatMulNBits takes 2-, 4- and 8-bit codes"), (2, "qdq", "--scheme matmulnbits")],
)
def test_unrepresentable_schemes_are_target_errors(tiny_llama, tmp_path, bits, scheme, needle):
    q = _quantize(tiny_llama, tmp_path / "q", QuantScheme(bits, 32, True))
    out = tmp_path / "o"
    code, _, err = run_cli("export", q, "--target", "onnx", "--scheme", scheme, "--out", out)
    assert code == 2 and needle in user_error_line(err)
    assert not out.exists() and not any(p.name.endswith(".partial") for p in tmp_path.iterdir())


@pytest.mark.parametrize("scheme", ["matmulnbits", "qdq"])
def test_quantized_embedding_and_untied_head(qdirs, tmp_path, scheme):
    """A checkpoint whose embedding is a QuantizedEmbedding and whose lm_head is a QuantizedLinear:
    GatherBlockQuantized (or DequantizeLinear + Gather) and a quantized head, equal to the torch decoder."""
    from edgequant.compress.grid import quantize_weight
    from edgequant.compress.qlinear import QuantizedEmbedding, QuantizedLinear
    from edgequant.export.llm import DecoderLM
    from edgequant.export.onnx import export_onnx
    from edgequant.models.loading import load_model
    from edgequant.targets.onnx import OnnxRuntime

    loaded = load_model(qdirs["asym"])
    model = loaded.model
    emb = model.model.embed_tokens.weight.detach().float()
    s = QuantScheme(4, 32, False)
    model.model.embed_tokens = QuantizedEmbedding(*quantize_weight(emb, s), s)
    model.lm_head = QuantizedLinear(*quantize_weight(emb * 0.5, s), s)
    details = export_onnx(loaded, tmp_path / "o", scheme=scheme, max_seq_len=MAX_SEQ, external_data=(scheme == "qdq"))
    if scheme == "qdq":  # weights in model.onnx.data, which the checker and the runtime find beside the model
        assert details["external_data"] and (tmp_path / "o" / "model.onnx.data").stat().st_size > 200_000
        graph = onnx.load(str(tmp_path / "o" / "model.onnx"), load_external_data=False)
        weights = [t for t in graph.graph.initializer if t.name.endswith(".qweight")]
        assert weights and all(t.data_location == onnx.TensorProto.EXTERNAL for t in weights)
    m = onnx.load(str(tmp_path / "o" / "model.onnx"))
    ops = {n.op_type for n in m.graph.node}
    assert ("GatherBlockQuantized" in ops) == (scheme == "matmulnbits") and "Gemm" not in ops
    ref = DecoderLM.from_loaded(loaded, max_seq_len=MAX_SEQ)
    toks = torch.arange(3, 30)
    with torch.no_grad():
        expected = ref(toks[None], torch.arange(toks.numel()))[0]
    got = OnnxRuntime(tmp_path / "o", threads=1).prefill(toks)
    assert (got - expected).abs().max().item() < 1e-4


def test_corrupt_or_foreign_model_is_one_error_line(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.onnx").write_bytes(b"not a protobuf")
    code, _, err = run_cli("generate", bad, "--prompt", "hi")
    assert code == 2 and "ONNX Runtime cannot load" in user_error_line(err)

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    m = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])], [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    ), opset_imports=[onnx.helper.make_opsetid("", 21)])
    m.ir_version = 10
    onnx.save(m, str(foreign / "model.onnx"))
    code, _, err = run_cli("profile", foreign, "--prompt-len", "4", "--gen", "2", "--runs", "1")
    assert code == 2 and "no edgequant metadata" in user_error_line(err)
