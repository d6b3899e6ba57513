"""ExecuTorch / XNNPACK: our codes in the program, parity with the torch model, metadata, the runner.

Lowering to XNNPACK is slow here (ExecuTorch re-traces each delegated subgraph: tens of seconds even
for a two-layer model), so the tests that export a whole decoder share one program and are marked slow;
the fast ones check the plan, the modules that are traced, and small programs of one or three layers.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

pytest.importorskip("executorch")
pytest.importorskip("torchao")

from conftest import run_cli, user_error_line  # noqa: E402

from edgequant.compress.checkpoint import ModuleQuant, QuantizationInfo, save_quantized  # noqa: E402
from edgequant.compress.grid import quantize_weight  # noqa: E402
from edgequant.compress.qlinear import QuantizedEmbedding, QuantizedLinear, set_submodule  # noqa: E402
from edgequant.compress.scheme import QuantScheme  # noqa: E402
from edgequant.errors import TargetError  # noqa: E402
from edgequant.export import executorch as E  # noqa: E402
from edgequant.models.loading import load_model  # noqa: E402

G32 = QuantScheme(4, 32, True)


def make_checkpoint(src: Path, out: Path, linears: dict[str, QuantScheme] | QuantScheme, embed: QuantScheme | None = None, lm_head: QuantScheme | None = None) -> Path:
    """A quantized checkpoint of the float model ``src`` by round-to-nearest, with any scheme per linear
    (a dict of name suffix -> scheme, first match wins; the rest use G32), and optionally a quantized
    embedding and lm_head (then untied)."""
    loaded = load_model(src)
    model = loaded.model
    modules: dict[str, ModuleQuant] = {}

    def pick(name: str) -> QuantScheme:
        if isinstance(linears, QuantScheme):
            return linears
        return next((s for k, s in linears.items() if name.endswith(k)), G32)

    for i, block in enumerate(loaded.adapter.block_list(model)):
        for n in loaded.adapter.linear_names():
            name = f"{loaded.adapter.blocks}.{i}.{n}"
            lin = block.get_submodule(n)
            s = pick(name)
            set_submodule(model, name, QuantizedLinear(*quantize_weight(lin.weight.detach(), s), s))
            modules[name] = ModuleQuant("linear", s, lin.in_features, lin.out_features)
    if embed is not None or lm_head is not None:
        model.config.tie_word_embeddings = False
        weight = model.get_submodule(loaded.adapter.embed).weight.detach().clone()
        model.lm_head = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        model.lm_head.weight = nn.Parameter(weight.clone(), requires_grad=False)
    if embed is not None:
        w = model.get_submodule(loaded.adapter.embed).weight.detach()
        set_submodule(model, loaded.adapter.embed, QuantizedEmbedding(*quantize_weight(w, embed), embed))
        modules[loaded.adapter.embed] = ModuleQuant("embedding", embed, w.shape[0], w.shape[1])
    if lm_head is not None:
        w = model.lm_head.weight.detach()
        set_submodule(model, loaded.adapter.lm_head, QuantizedLinear(*quantize_weight(w, lm_head), lm_head))
        modules[loaded.adapter.lm_head] = ModuleQuant("linear", lm_head, w.shape[1], w.shape[0])
    info = QuantizationInfo(method="rtn", default_scheme=G32, modules=modules, source={"name": str(src)})
    out.mkdir(parents=True)
    save_quantized(model, loaded.tokenizer, info, out)
    return out


@pytest.fixture(scope="module")
def g32_dir(tiny_llama, tmp_path_factory):
    return make_checkpoint(tiny_llama, tmp_path_factory.mktemp("et") / "g32", G32)


def _leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


# ---------------------------------------------------------------------------------------------- the plan


@pytest.mark.parametrize(
    "linears, scheme, words",
    [
        (QuantScheme(4, 32, False), "8da4w", ["symmetric"]),
        (QuantScheme(3, 32, True), "8da4w", ["3-bit", "bits=4", "8da4w"]),
        (QuantScheme(8, 32, True), "8da4w", ["per channel"]),
        (G32, "8w", ["8da4w", "4w"]),
    ],
)
def test_unrepresentable_schemes_stop_with_a_clear_error(tiny_llama, tmp_path, linears, scheme, words):
    from edgequant.export.api import export

    q = make_checkpoint(tiny_llama, tmp_path / "q", linears)
    out = tmp_path / "out" / "m.pte"
    with pytest.raises(TargetError) as e:
        export(q, "xnnpack", out, scheme=scheme)
    msg = str(e.value)
    assert "\n" not in msg and all(w in msg for w in words), msg
    assert _leftovers(out.parent) == []  # no artifact, no tokenizer, no temporary directory


def test_cli_error_is_one_line_and_leaves_nothing(tiny_llama, tmp_path):
    q = make_checkpoint(tiny_llama, tmp_path / "q", QuantScheme(4, 32, False))
    out = tmp_path / "out" / "m.pte"
    code, _, err = run_cli("export", q, "--target", "xnnpack", "--out", out)
    assert code == 2
    assert "symmetric" in user_error_line(err)
    assert not out.parent.exists() or _leftovers(out.parent) == []


# ------------------------------------------------------------------------- the modules that are traced


def test_traced_linears_carry_our_codes_and_scales(tiny_llama, tmp_path):
    q = make_checkpoint(tiny_llama, tmp_path / "q", {"q_proj": QuantScheme(8, -1, True), "down_proj": QuantScheme(4, -1, True)})
    loaded = load_model(q)
    lm, plans = E.build_executorch_lm(loaded, "8da4w", max_seq_len=32)
    assert {p.kind for p in plans.values()} == {"qb4w", "qc8w", "fp32"}
    assert plans["lm_head"].kind == "fp32"  # tied to the float embedding
    for i, block in enumerate(lm.layers):
        for n in loaded.adapter.linear_names():
            ours = loaded.model.get_submodule(f"model.layers.{i}.{n}")
            w = getattr(block, n.split(".")[-1]).weight
            zero = ours.scheme.implicit_zero
            assert torch.equal(w.qdata.to(torch.int16) + zero, ours.codes.to(torch.int16))
            assert torch.equal(w.scale, ours.scales.float())
            assert torch.equal(w.dequantize(), ours.weight)  # the weight the torch model computes with


def test_traced_model_matches_the_quantized_torch_model(g32_dir):
    """The eager module that is exported (int8 dynamic activations, ExecuTorch's cache and SDPA) against
    the quantized checkpoint run by the reference runtime: only activation quantization differs."""
    from edgequant.targets.torch_runtime import TorchRuntime

    lm, _ = E.build_executorch_lm(load_model(g32_dir), "8da4w", max_seq_len=64)
    ref = TorchRuntime(g32_dir, max_seq_len=64)
    toks = torch.randint(3, lm.spec.vocab_size, (40,), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = lm(toks[None], torch.arange(40))[0]
        # prefill 30, then decode one at a time: the cache gives the same logits
        part = [lm(toks[None, :30], torch.arange(30))[0]] + [lm(toks[None, i : i + 1], torch.tensor([i]))[0] for i in range(30, 40)]
    want = ref.prefill(toks)
    assert torch.allclose(torch.cat(part), full, atol=1e-4)
    p, r = torch.log_softmax(full, -1), torch.log_softmax(want, -1)
    kl = (r.exp() * (r - p)).sum(-1)
    assert kl.mean() < 1e-3
    assert (full.argmax(-1) == want.argmax(-1)).float().mean() >= 0.95


@pytest.mark.parametrize("scheme", [QuantScheme(2, 32, True), QuantScheme(3, 32, False), QuantScheme(4, 32, True), QuantScheme(4, 32, False), QuantScheme(8, -1, True), QuantScheme(8, 32, False)])
def test_embedding_ops_reproduce_our_embedding_in_the_runtime(scheme, tmp_path):
    """ExecuTorch's quantized embedding kernels, run by the runtime, give exactly our embedding."""
    from executorch.exir import to_edge

    from edgequant.targets.executorch import _portable_lib

    torch.manual_seed(0)
    ours = QuantizedEmbedding(*quantize_weight(torch.randn(50, 64), scheme), scheme)

    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.e = E.ExecuTorchQuantizedEmbedding(ours)

        def forward(self, ids):
            return self.e(ids)

    ids = torch.tensor([[0, 7, 49, 7, 3]])
    with E.quiet(), torch.no_grad():
        prog = to_edge(torch.export.export(Wrap(), (ids,), strict=False)).to_executorch()
    f = tmp_path / "e.pte"
    f.write_bytes(prog.buffer)
    out = _portable_lib()._load_for_executorch(str(f)).forward((ids,))[0]
    assert torch.equal(out, ours(ids))
    assert torch.equal(Wrap()(ids), ours(ids))


def _xnnpack_run(net: nn.Module, x: torch.Tensor, path: Path) -> tuple[torch.Tensor, dict]:
    """Lower ``net`` to XNNPACK, run the program in ExecuTorch's runtime: (output, delegation summary)."""
    from executorch.exir import EdgeCompileConfig, to_edge_transform_and_lower

    from edgequant.targets.executorch import _portable_lib

    with E.quiet(), torch.no_grad():
        ep = torch.export.export(net, (x,), strict=False).run_decompositions({})
        edge = to_edge_transform_and_lower(ep, partitioner=E._partitioners("all"), compile_config=EdgeCompileConfig(_check_ir_validity=False))
        summary = E.delegation_summary(edge.exported_program().graph_module)
        path.write_bytes(edge.to_executorch().buffer)
    return _portable_lib()._load_for_executorch(str(path)).forward((x,))[0], summary


def test_small_program_holds_our_codes_bit_for_bit(tmp_path):
    """Four linears (int4 g32, int4 per channel, int8 per channel under 8da4w; asymmetric 3-bit under 4w)
    lowered to XNNPACK: the program's delegate data holds our codes byte for byte with our scales as
    XNNPACK stores them (the 4w one as its exact float32 weight), and computes with them."""
    torch.manual_seed(0)
    specs = {"a": (QuantScheme(4, 32, True), 64, 96), "b": (QuantScheme(4, -1, True), 96, 64), "c": (QuantScheme(8, -1, True), 64, 32), "d": (QuantScheme(3, 32, False), 32, 48)}
    ours = {k: QuantizedLinear(*quantize_weight(torch.randn(o, i), s), s) for k, (s, i, o) in specs.items()}
    plans = {k: E.plan_linear(k, m, "4w" if k == "d" else "8da4w") for k, m in ours.items()}
    assert [p.kind for p in plans.values()] == ["qb4w", "qb4w", "qc8w", "fp32w"]

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            for k, m in ours.items():
                setattr(self, k, E.float_linear(m) if plans[k].kind == "fp32w" else E.xnnpack_linear(m, plans[k]))

        def forward(self, x):
            return self.d(self.c(self.b(self.a(x))))

    net = Net()
    x = torch.randn(3, 64)
    got, summary = _xnnpack_run(net, x, tmp_path / "l.pte")
    pte = (tmp_path / "l.pte").read_bytes()
    assert summary["delegate_calls"] == 1 and summary["outside"] == {} and summary["inside"]["aten.linear.default"] == 4
    assert E.verify_program_weights(pte, ours, plans) == {"verified": 4, "missing": []}
    # the bytes really are the codes: nibbles of layer a unpacked back equal our codes
    data = E.program_named_data(pte)
    key = next(k for k in E.xnnpack_weight_blobs(ours["a"], plans["a"]) if not k.startswith("scale_"))
    blob = torch.frombuffer(bytearray(data[key]), dtype=torch.uint8)
    codes = torch.stack([blob & 15, blob >> 4], -1).reshape(96, 64)
    assert torch.equal(codes, ours["a"].codes)
    # and the program computes with them
    with torch.no_grad():
        want = net(x)
        exact = ours["d"](ours["c"](ours["b"](ours["a"](x))))
    assert torch.allclose(got, want, rtol=0.02, atol=0.02 * want.abs().max().item())
    assert (got - exact).abs().max() <= 0.05 * exact.abs().max()


def test_int8_grid_is_requantized_without_loss():
    """The first half of 8da4w-r's rows: XNNPACK's per-token parameters recomputed from the gridded values
    give back the same grid, so its int8 quantization of them loses nothing; the residual is at most half
    a step."""
    torch.manual_seed(0)
    x = torch.cat([torch.randn(64, 256) * torch.rand(64, 1) * 10, torch.randn(4, 256).abs(), -torch.randn(4, 256).abs(), torch.zeros(1, 256)])
    x[5, 17] = 900.0  # a massive activation
    g = E.int8_grid(x)
    lo, hi = g.amin(-1, keepdim=True).clamp(max=0), g.amax(-1, keepdim=True).clamp(min=0)
    s = ((hi - lo) / 255).clamp_min(1e-30)
    zp = torch.clamp(-128 - torch.round(lo / s), -128, 127)
    q = torch.clamp(torch.round(g / s) + zp, -128, 127)
    assert torch.allclose((q - zp) * s, g, rtol=0, atol=1e-6 * float(g.abs().max()))
    step = ((x.amax(-1, keepdim=True).clamp(min=0) - x.amin(-1, keepdim=True).clamp(max=0)) / 255)
    assert bool(((x - g).abs() <= step / 2 * (1 + 1e-5) + 1e-30).all())
    assert g[-1].abs().max() == 0


def test_residual_pass_linear_runs_in_xnnpack_at_float_activation_accuracy(tmp_path):
    """8da4w-r lowered to XNNPACK (one qd8 GEMM over twice the rows, our int4 codes) computes what our
    float-activation linear computes to about 1e-5 of the output's range; plain 8da4w is off by int8's
    rounding (about 1e-2)."""
    torch.manual_seed(0)
    ours = QuantizedLinear(*quantize_weight(torch.randn(96, 128), G32), G32)
    ours.bias = nn.Parameter(torch.randn(96), requires_grad=False)
    plan = E.plan_linear("a", ours, "8da4w-r")
    x = torch.randn(1, 5, 128) * torch.linspace(0.1, 8, 128)  # channels of very different ranges
    x[0, 2, 3] = 300.0
    with torch.no_grad():
        exact = ours(x)
    got_r, summary = _xnnpack_run(E.ResidualPassLinear(E.xnnpack_linear(ours, plan)), x, tmp_path / "r.pte")
    got_8, _ = _xnnpack_run(E.xnnpack_linear(ours, plan), x, tmp_path / "p.pte")
    assert summary["outside"] == {}  # the split and the sum run inside XNNPACK too
    assert summary["inside"].get("aten.linear.default") == 1  # the GEMM is XNNPACK's, once, for both halves
    err_r = ((got_r - exact).abs().amax(-1) / exact.abs().amax(-1)).max().item()
    err_8 = ((got_8 - exact).abs().amax(-1) / exact.abs().amax(-1)).max().item()
    assert err_r < 1e-4 and err_8 > 30 * err_r, (err_r, err_8)
    v = E.verify_program_weights((tmp_path / "r.pte").read_bytes(), {"a": ours}, {"a": plan})
    assert v == {"verified": 1, "missing": []}


# -------------------------------------------------------------------------------- a whole decoder (slow)


@pytest.fixture(scope="module")
def exported(tiny_llama, tmp_path_factory):
    """One tiny decoder with every representable form: int4 g32 / g64 / per channel, int8 per channel,
    an asymmetric 4-bit embedding and a float lm_head; exported once through the CLI."""
    d = tmp_path_factory.mktemp("etx")
    q = make_checkpoint(
        tiny_llama, d / "q",
        {"layers.0.self_attn.q_proj": QuantScheme(8, -1, True), "gate_proj": QuantScheme(4, 64, True), "down_proj": QuantScheme(4, -1, True)},
        embed=QuantScheme(4, 32, False),
    )
    out = d / "out" / "model.pte"
    code, stdout, err = run_cli("export", q, "--target", "xnnpack", "--out", out, "--max-seq-len", "96", "--json")
    assert code == 0, err
    return q, out, json.loads(stdout)


@pytest.mark.slow
def test_cli_writes_program_and_tokenizer_with_everything_delegated(exported):
    q, out, r = exported
    assert out.is_file() and (out.parent / "model.tokenizer" / "tokenizer.json").is_file()
    assert _leftovers(out.parent) == ["model.pte", "model.tokenizer"]
    d = r["details"]
    assert d["linears_outside"] == 0
    assert d["linears"] == {"8da-qb4w": 13, "8da-qc8w": 1, "fp32": 1}
    assert d["inside"]["aten.linear.default"] == 15
    assert d["weights_verified"] == 14
    assert d["embedding"] == "ExecuTorchQuantizedEmbedding"
    assert 0 < d["int4_scale_rounding"]["max_rel"] <= 2**-8


@pytest.mark.slow
def test_program_holds_our_weights(exported):
    q, out, _ = exported
    loaded = load_model(q)
    plans = E.plan_model(loaded, "8da4w")
    mods = {n: loaded.model.get_submodule(n) for n in plans}
    assert E.verify_program_weights(out.read_bytes(), mods, plans) == {"verified": 14, "missing": []}
    # the embedding's packed codes are a constant of the program
    from executorch.exir._serialize._program import deserialize_pte_binary

    emb = E.ExecuTorchQuantizedEmbedding(loaded.model.model.embed_tokens)
    consts = {bytes(b.storage) for b in deserialize_pte_binary(out.read_bytes()).program.constant_buffer}
    assert emb.packed.numpy().tobytes() in consts and emb.scales.numpy().tobytes() in consts


@pytest.mark.slow
def test_metadata_round_trip(exported):
    from edgequant.targets.executorch import ExecuTorchRuntime

    q, out, _ = exported
    rt = ExecuTorchRuntime(out, threads=1)
    tok = load_model(q).tokenizer
    m = rt.meta
    assert (m.target, m.vocab_size, m.max_seq_len, m.n_layers, m.scheme) == ("xnnpack", len(tok), 96, 2, "8da4w")
    assert m.bos_id == tok.bos_token_id and m.eos_ids == [tok.eos_token_id]
    assert rt.max_chunk == 96 and m.extra["max_chunk"] == 96
    assert m.extra["linears"] == {"8da-qb4w": 13, "8da-qc8w": 1, "fp32": 1}
    # ExecuTorch's llama-runner convention
    mod = rt.module
    assert mod.run_method("get_max_context_len", []) == [96]
    assert mod.run_method("get_max_seq_len", []) == [96]
    assert mod.run_method("get_vocab_size", []) == [len(tok)]
    assert mod.run_method("get_bos_id", []) == [tok.bos_token_id]
    assert mod.run_method("use_kv_cache", []) == [True]
    assert rt.threads == 1


@pytest.mark.slow
def test_program_agrees_with_the_torch_model(exported):
    from edgequant.targets.executorch import ExecuTorchRuntime
    from edgequant.targets.torch_runtime import TorchRuntime

    q, out, _ = exported
    rt = ExecuTorchRuntime(out)
    lm, _ = E.build_executorch_lm(load_model(q), "8da4w", max_seq_len=96)
    ref = TorchRuntime(q, max_seq_len=96)
    toks = torch.randint(3, rt.meta.vocab_size, (90,), generator=torch.Generator().manual_seed(1))
    got = rt.prefill(toks)
    with torch.no_grad():
        traced = lm(toks[None], torch.arange(90))[0]
    want = ref.prefill(toks)

    def kl(a, b):
        pa, pb = torch.log_softmax(a, -1), torch.log_softmax(b, -1)
        return float((pb.exp() * (pb - pa)).sum(-1).mean())

    # against the module that was exported: the same numbers but for bf16 int4 scales and kernel rounding
    assert (got.argmax(-1) == traced.argmax(-1)).float().mean() >= 0.97
    assert kl(got, traced) < 1e-3
    # against the quantized checkpoint (float activations)
    assert (got.argmax(-1) == want.argmax(-1)).float().mean() >= 0.95
    assert kl(got, want) < 2e-3


@pytest.mark.slow
def test_cache_decode_and_reset(exported):
    """Prefill + one-token decode steps give the logits of one long prefill; a new sequence after
    reset() does not see the old one; chunks longer than max_chunk are split."""
    from edgequant.targets.executorch import ExecuTorchRuntime

    _, out, _ = exported
    rt = ExecuTorchRuntime(out)
    toks = torch.randint(3, rt.meta.vocab_size, (40,), generator=torch.Generator().manual_seed(2))
    full = rt.prefill(toks)
    rt.reset()
    steps = [rt.forward(toks[:25], 0)] + [rt.forward(toks[i : i + 1], i) for i in range(25, 40)]
    assert torch.allclose(torch.cat(steps), full, atol=1e-4)
    rt.reset()
    other = torch.randint(3, rt.meta.vocab_size, (60,), generator=torch.Generator().manual_seed(3))
    rt.prefill(other)
    rt.reset()
    assert torch.allclose(rt.prefill(toks), full, atol=1e-4)
    rt.max_chunk = 16  # forward() splits what is longer than one call takes
    rt.reset()
    assert torch.allclose(rt.forward(toks, 0), full, atol=1e-4)
    with pytest.raises(Exception, match="max sequence length"):
        rt.forward(toks, 80)


@pytest.mark.slow
def test_runner_generates_and_profiles(exported):
    from edgequant.eval.generate import generate
    from edgequant.targets.executorch import ExecuTorchRuntime
    from edgequant.targets.runtime import load_artifact_tokenizer

    _, out, _ = exported
    rt = ExecuTorchRuntime(out)
    tok = load_artifact_tokenizer(out)
    r = generate(rt, tok, "To be, or not to be", max_new_tokens=12, temperature=0.0, chat=False, ignore_eos=True)
    assert r.new_tokens == 12 and r.stop_reason == "max_new_tokens" and r.decode_tok_s > 0 and r.text
    code, stdout, err = run_cli("profile", out, "--prompt-len", "16", "--gen", "6", "--runs", "1", "--warmup", "0", "--threads", "1", "--per-op", "--json")
    assert code == 0, err
    p = json.loads(stdout)
    assert p["target"] == "xnnpack" and p["prefill_tok_s"] > 0 and p["decode_tok_s"] > 0
    ops = {row["op"] for row in p["per_op"]}
    assert any(op.startswith("xnnpack:Fully Connected") for op in ops), ops
    assert "llama::custom_sdpa.out" in ops
    assert abs(sum(row["share"] for row in p["per_op"]) - 1) < 0.01


@pytest.mark.slow
def test_executorchs_own_llm_runner_runs_the_program(exported):
    """ExecuTorch's C++ TextLLMRunner reads our metadata methods and generates with the program, greedily
    picking the same tokens as our runtime."""
    from executorch.extension.llm.runner import GenerationConfig, TextLLMRunner

    from edgequant.targets.executorch import ExecuTorchRuntime, _portable_lib

    _, out, _ = exported
    _portable_lib()  # registers the llama:: and quantized kernels the runner's program needs
    tok_dir = out.with_suffix(".tokenizer")
    runner = TextLLMRunner(str(out), str(tok_dir / "tokenizer.json"))
    pieces: list[str] = []
    runner.generate("To be, or not to be", GenerationConfig(echo=False, max_new_tokens=8, temperature=0.0), token_callback=pieces.append)
    assert len(pieces) >= 1

    # the same greedy continuation through our runtime, from the same prompt tokens
    from edgequant.targets.runtime import load_artifact_tokenizer

    tok = load_artifact_tokenizer(out)
    ids = tok("To be, or not to be", add_special_tokens=False)["input_ids"]
    rt = ExecuTorchRuntime(out)
    logits = rt.prefill(torch.tensor(ids))[-1]
    ours = []
    for pos in range(len(ids), len(ids) + len(pieces)):
        t = int(torch.argmax(logits))
        ours.append(t)
        logits = rt.forward(torch.tensor([t]), pos)[-1]
    assert "".join(pieces) == tok.decode(ours)


@pytest.mark.slow
def test_cli_check_against_the_quantized_checkpoint(exported):
    q, out, _ = exported
    code, stdout, err = run_cli("check", out, "--ref", q, "--text", "builtin:britannica", "--max-tokens", "256", "--seq-len", "64", "--json")
    assert code == 0, err
    r = json.loads(stdout)
    assert r["target"] == "xnnpack" and r["top1"] >= 0.95 and r["kl"] < 2e-3


def _cli_export(q: Path, out: Path, scheme: str) -> dict:
    """``edgequant export --target xnnpack --scheme SCHEME --json``: the exporter's details."""
    code, stdout, err = run_cli("export", q, "--target", "xnnpack", "--scheme", scheme, "--out", out, "--max-seq-len", "64", "--json")
    assert code == 0, err
    return json.loads(stdout)["details"]


@pytest.mark.slow
def test_weight_only_4w_is_parity_exact_for_any_scheme(tiny_llama, tmp_path):
    """--scheme 4w: float activations with exactly our weights (held as float32), so an asymmetric 3-bit
    checkpoint XNNPACK cannot compute in int4 still exports, and agrees with the torch model to float
    rounding."""
    from edgequant.targets.executorch import ExecuTorchRuntime
    from edgequant.targets.torch_runtime import TorchRuntime

    q = make_checkpoint(tiny_llama, tmp_path / "q", QuantScheme(3, 32, False), embed=QuantScheme(8, -1, True))
    out = tmp_path / "m.pte"
    d = _cli_export(q, out, "4w")
    assert d["linears"] == {"fp32w": 14, "fp32": 1} and d["weights_verified"] == 14 and d["linears_outside"] == 0
    rt, ref = ExecuTorchRuntime(out), TorchRuntime(q, max_seq_len=64)
    toks = torch.randint(3, rt.meta.vocab_size, (60,), generator=torch.Generator().manual_seed(4))
    got, want = rt.prefill(toks), ref.prefill(toks)
    assert torch.equal(got.argmax(-1), want.argmax(-1))
    assert (got - want).abs().max() < 1e-3


def test_residual_pass_model_matches_the_quantized_torch_model(g32_dir):
    """The eager module exported for 8da4w-r against the quantized checkpoint: the activations' second
    int8 pass leaves only float rounding between them (plain 8da4w's int8 noise is far larger)."""
    from edgequant.targets.torch_runtime import TorchRuntime

    loaded = load_model(g32_dir)
    lm_r, _ = E.build_executorch_lm(loaded, "8da4w-r", max_seq_len=64)
    lm_8, _ = E.build_executorch_lm(loaded, "8da4w", max_seq_len=64)
    toks = torch.randint(3, lm_r.spec.vocab_size, (40,), generator=torch.Generator().manual_seed(0))
    want = TorchRuntime(g32_dir, max_seq_len=64).prefill(toks)
    with torch.no_grad():
        got_r = lm_r(toks[None], torch.arange(40))[0]
        got_8 = lm_8(toks[None], torch.arange(40))[0]
    err_r, err_8 = (got_r - want).abs().max().item(), (got_8 - want).abs().max().item()
    assert torch.equal(got_r.argmax(-1), want.argmax(-1))
    assert err_r < 1e-3 * want.abs().max().item() and err_8 > 20 * err_r, (err_r, err_8)


@pytest.mark.slow
def test_residual_pass_program_agrees_with_the_quantized_checkpoint(g32_dir, tmp_path):
    """--scheme 8da4w-r end to end: our int4 codes in XNNPACK's qd8 kernel, and the program agrees with
    the float-activation quantized checkpoint to float rounding."""
    from edgequant.targets.executorch import ExecuTorchRuntime
    from edgequant.targets.torch_runtime import TorchRuntime

    out = tmp_path / "r.pte"
    d = _cli_export(g32_dir, out, "8da4w-r")
    assert d["linears"] == {"8da-qb4w": 14, "fp32": 1} and d["weights_verified"] == 14 and d["linears_outside"] == 0
    rt, ref = ExecuTorchRuntime(out), TorchRuntime(g32_dir, max_seq_len=64)
    toks = torch.randint(3, rt.meta.vocab_size, (60,), generator=torch.Generator().manual_seed(4))
    got = torch.cat([rt.prefill(toks[:50])] + [rt.forward(toks[i : i + 1], i) for i in range(50, 60)])
    want = ref.prefill(toks)
    assert rt.meta.scheme == "8da4w-r"
    assert torch.equal(got.argmax(-1), want.argmax(-1))
    assert (got - want).abs().max() < 1e-3 * want.abs().max()
