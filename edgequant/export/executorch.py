"""ExecuTorch exporter: a quantized checkpoint to one ``.pte`` program lowered to XNNPACK.

The program has one method, ``forward(tokens [1, T], input_pos [T]) -> logits [1, T, vocab]``, with
``1 <= T <= max_chunk``, so one program serves prefill (many tokens) and decode (one token). Its KV
cache is a set of mutable buffers ``[1, max_seq_len, n_kv_heads, head_dim]`` written in place by
ExecuTorch's ``llama::update_cache`` op; attention is ExecuTorch's ``llama::custom_sdpa`` (causal, it
reads cache slots ``0 .. input_pos[-1]`` only, grouped-query heads without copies). Because attention
never reads a slot past the current position, a new sequence starting at position 0 simply overwrites
the old one: nothing has to be cleared between sequences.

Weights are ours, never re-quantized. Each :class:`QuantizedLinear` becomes an ``nn.Linear`` whose
weight is torchao's ``IntxUnpackedToInt8Tensor`` built from the checkpoint's codes and scales (signed
codes ``code - zero``, zero point 0); exported, it is ``dequantize_affine`` (+ the per-token
``choose_qparams/quantize/dequantize`` of int8 dynamic activations), the pattern XNNPACK's partitioner
turns into its ``qd8-f32-qb4w`` (int4 in groups; a per-channel int4 layer is one group) or ``qd8-f32-qc8w``
(per-channel int8) fully-connected kernels. The codes go into the program bit for bit; XNNPACK stores
int4 scales as bfloat16, and edgequant's scales are chosen exact in both float16 and bfloat16, so they
go in unchanged too (a checkpoint from another tool may lose up to 2^-8 relative there, which
:func:`scale_rounding` reports); int8 per-channel scales stay float32 (exact). :func:`verify_program_weights` reads them back
out of the written program. Float linears (a float ``lm_head``, tied or not) are XNNPACK fp32 GEMMs. A
:class:`QuantizedEmbedding` becomes ExecuTorch's ``quantized_decomposed::embedding_{2,4}bit / byte``
with our codes and float32 scales (exact).

The int8 dynamic activations are what 8da4w costs against the checkpoint's float-activation numerics (on
SmolLM2-135M a mean KL of about 0.02 and 7% of top-1 choices). One linear at a time the program is XNNPACK's
result to 1e-6, but over 30 layers the rounding of int8 activations is chaotic: scaling the embeddings by
1 + 1e-6 moves 7.6% of the eager 8da4w model's own top-1 choices, so no implementation can agree with another
(or with itself, perturbed) at 99%. Scheme ``8da4w-r`` removes that noise in the same kernel: each quantized
linear runs one qd8 GEMM over ``[grid(x); x - grid(x)]`` (twice the rows) and sums the halves, where
``grid(x)`` is ``x`` on the int8 grid XNNPACK itself picks (re-quantized without loss) and the second half the
rounding residual on a grid 255 times finer: about 16-bit activations, the same int4 weights read once per
call, parity with the checkpoint to float rounding. Scheme ``4w`` keeps float activations and holds our
dequantized weights as float32 (XNNPACK has no weight-only GEMM for grouped int4): exact parity for any bit
width or zero point, at the size and speed of a float model.

Metadata follows ExecuTorch's LLM runner convention (constant methods ``get_max_seq_len`` = the most
tokens one call takes, ``get_max_context_len`` = the cache length, ``get_vocab_size``, ``get_bos_id``,
``get_eos_ids``, ``get_n_layers``, ``use_kv_cache``, ``use_sdpa_with_kv_cache``,
``enable_dynamic_shape``) and adds ``get_edgequant_meta``, our :class:`ArtifactMeta` as JSON.
"""
from __future__ import annotations

import collections
import contextlib
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from edgequant.compress.qlinear import QuantizedEmbedding, QuantizedLinear
from edgequant.compress.scheme import QuantScheme
from edgequant.errors import EdgequantError, TargetError

#: the most tokens one forward call takes unless asked otherwise (bounds the logits buffer: T x vocab floats)
DEFAULT_MAX_CHUNK = 128
META_METHOD = "get_edgequant_meta"

#: 8da4w: int8 dynamic activations (asymmetric, per token) with int4 weights (in groups of a multiple of 32, or
#: per channel); a layer the checkpoint keeps at 8 bits per channel runs as 8da8w, a float one as an fp32 GEMM.
#: 8da4w-r: the same kernels and weights, with a second int8 pass over each activation's rounding residual
#: (see ResidualPassLinear): float-activation accuracy, twice the GEMM rows.
#: 4w: weight-only numerics (float activations) with exactly our weights, which XNNPACK can only hold as float32
#: (it has no weight-only GEMM for grouped int4): parity-exact with the quantized checkpoint, any bit width or
#: zero point, but no smaller or faster than a float model.
SUPPORTED_SCHEMES = ("8da4w", "8da4w-r", "4w")


@dataclass(frozen=True)
class LinearPlan:
    """How one linear is represented in the program."""

    #: "qb4w" (int4 in groups; per channel = one group), "qc8w" (per-channel int8), "fp32" (a float linear),
    #: "fp32w" (our quantized weight, dequantized exactly to float32)
    kind: str
    scheme: QuantScheme | None

    @property
    def label(self) -> str:
        return self.kind if self.kind.startswith("fp32") else f"8da-{self.kind}"


# ----------------------------------------------------------------------------------------------------------
# what XNNPACK can represent


def plan_linear(name: str, module: nn.Module, scheme: str) -> LinearPlan:
    """The XNNPACK form of one linear, or a TargetError naming the closest form that works."""
    if not isinstance(module, QuantizedLinear):
        return LinearPlan("fp32", None)
    s = module.scheme
    if scheme == "4w":
        return LinearPlan("fp32w", s)
    if scheme == "8w":
        raise TargetError(
            "XNNPACK has no weight-only int8 GEMM for grouped weights: export with --scheme 8da4w (int8 dynamic "
            "activations), or --scheme 4w for weight-only numerics with the weights held as float32"
        )
    if not s.symmetric:
        raise TargetError(
            f"{name} is {s.describe()}: XNNPACK's int4/int8 weights are symmetric (no per-group zero point); "
            "re-quantize with a symmetric scheme (e.g. int4 g32 sym) for the xnnpack target, or use the onnx target"
        )
    if s.bits == 4:
        if s.group_size != -1 and s.group_size % 32:
            raise TargetError(f"{name} has group size {s.group_size}: XNNPACK needs a multiple of 32; re-quantize with group size 32, 64 or 128")
        return LinearPlan("qb4w", s)
    if s.bits == 8:
        if s.group_size != -1:
            raise TargetError(
                f"{name} is {s.describe()}: XNNPACK has 8-bit weights per channel only; re-quantize 8-bit layers "
                "with group size -1 (per channel) or use 4 bits (8da4w)"
            )
        return LinearPlan("qc8w", s)
    raise TargetError(
        f"{name} is {s.describe()}: XNNPACK has no {s.bits}-bit weights; the closest scheme that works is int4 "
        f"(8da4w): re-quantize with bits=4"
    )


def plan_model(loaded, scheme: str) -> dict[str, LinearPlan]:
    """Plans for every linear the decoder uses (blocks and lm_head), checked before anything is built."""
    if scheme not in SUPPORTED_SCHEMES and scheme not in ("4w", "8w"):
        raise TargetError(f"unknown xnnpack scheme '{scheme}'; use one of {', '.join(SUPPORTED_SCHEMES)}")
    model, adapter = loaded.model, loaded.adapter
    plans: dict[str, LinearPlan] = {}
    for i, block in enumerate(adapter.block_list(model)):
        for n in adapter.linear_names():
            plans[f"{adapter.blocks}.{i}.{n}"] = plan_linear(f"{adapter.blocks}.{i}.{n}", block.get_submodule(n), scheme)
    plans[adapter.lm_head] = plan_linear(adapter.lm_head, model.get_submodule(adapter.lm_head), scheme)
    if not any(p.kind != "fp32" for p in plans.values()):
        raise TargetError("the checkpoint has no quantized linears: quantize it first (edgequant quantize)")
    return plans


# ----------------------------------------------------------------------------------------------------------
# modules the program is traced from


def signed_codes(module: QuantizedLinear | QuantizedEmbedding) -> torch.Tensor:
    """``code - zero`` per element as int8 (symmetric schemes: ``code - 2**(bits-1)``)."""
    g = module.codes.shape[1] // module.scales.shape[1]
    zeros = module.zeros.to(torch.int16).repeat_interleave(g, dim=1)
    return (module.codes.to(torch.int16) - zeros).to(torch.int8)


def xnnpack_linear(module: QuantizedLinear, plan: LinearPlan) -> nn.Linear:
    """An ``nn.Linear`` whose weight is torchao's IntxUnpackedToInt8Tensor holding our codes and scales,
    with int8 per-token dynamic activation quantization (the pattern XNNPACK lowers to its qd8 GEMMs)."""
    from torchao.quantization.quantize_.workflows.intx.intx_unpacked_to_int8_tensor import (
        IntxUnpackedToInt8Tensor,
        IntxUnpackedToInt8TensorActivationQuantization,
    )

    s = module.scheme
    group = s.group_width(module.in_features)
    scale = module.scales.to(torch.float32)  # float16 values, exact in float32
    weight = IntxUnpackedToInt8Tensor(
        qdata=signed_codes(module),
        scale=scale,
        zero_point=torch.zeros_like(scale, dtype=torch.int8),
        target_dtype=torch.int4 if s.bits == 4 else torch.int8,
        block_size=(1, group),
        dtype=torch.float32,
        activation_quantization=IntxUnpackedToInt8TensorActivationQuantization.INT8_ASYM_PER_TOKEN,
    )
    lin = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
    lin.weight = nn.Parameter(weight, requires_grad=False)
    if module.bias is not None:
        lin.bias = nn.Parameter(module.bias.detach().float().clone(), requires_grad=False)
    return lin


def int8_grid(x: torch.Tensor) -> torch.Tensor:
    """``x`` rounded per token (last dim) to the int8 grid XNNPACK's dynamic quantization picks for it:
    integer multiples of ``s = (max(x, 0) - min(x, 0)) / 255``. The rounded extremes are 255 steps apart
    (``hi/s - lo/s = 255``), so quantizing the result again with XNNPACK's own per-token parameters recomputes
    the scale ``s`` (to an ulp) and a zero point that is an integer number of steps: every value sits on a
    code and nothing is lost.

    Written with few operators, all of which XNNPACK runs (a rank-4 max.dim, floor, clamp, arithmetic), so the
    split stays inside the delegate; any rounding to integers works, so floor(v + 0.5) stands in for round."""
    k = x.shape[-1]
    x4 = x.reshape(1, -1, k).unsqueeze(-1)  # [1, T, K, 1]: a trailing unsqueeze and a max over dim 2 stay in XNNPACK
    hi = x4.max(2, keepdim=True).values.clamp(min=0)
    neg_lo = (-x4).max(2, keepdim=True).values.clamp(min=0)
    s = ((hi + neg_lo) * (1 / 255)).clamp(min=1e-30)
    g = (torch.floor(x4 / s + 0.5) * s).view(1, -1, k)  # one inferred dimension: XNNPACK's reshape takes it
    return g if x.dim() == 3 else g.reshape(x.shape)


class ResidualSplit:
    """``[grid(x); x - grid(x)]`` along the token axis, computed once per input tensor: the q/k/v projections
    (and gate/up) share one input, so the program splits it once, not three times."""

    def __init__(self) -> None:
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self._last is not None and self._last[0] is x:
            return self._last[1]
        g = int8_grid(x)
        both = torch.cat([g, x - g], dim=-2)
        self._last = (x, both)
        return both


class ResidualPassLinear(nn.Module):
    """``8da4w-r``: one int8-dynamic-activation GEMM over twice the rows, ``[grid(x); x - grid(x)]``, summed.

    The first half is ``x`` on its own int8 grid (re-quantized by XNNPACK without loss), the second the
    rounding residual (at most half a step, quantized on a grid 255 times finer), so the activations carry
    about 16 bits instead of 8 while the weights are the same int4 codes in the same XNNPACK kernel. Decode
    reads the weights once for both rows; prefill does twice the arithmetic."""

    def __init__(self, lin: nn.Linear, split: ResidualSplit | None = None) -> None:
        super().__init__()
        self.bias = lin.bias
        lin.bias = None
        self.lin = lin
        self.split = split or ResidualSplit()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[-2]
        y = self.lin(self.split(x))
        y = y[..., :n, :] + y[..., n:, :]
        return y if self.bias is None else y + self.bias


def float_linear(module: nn.Module) -> nn.Linear:
    lin = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
    lin.weight = nn.Parameter(module.weight.detach().float().clone(), requires_grad=False)
    if module.bias is not None:
        lin.bias = nn.Parameter(module.bias.detach().float().clone(), requires_grad=False)
    return lin


class ExecuTorchQuantizedEmbedding(nn.Module):
    """Our embedding codes as ExecuTorch's ``quantized_decomposed::embedding_{2bit,4bit,byte}``.

    The ops compute ``(stored - offset - zero_point) * scale`` with ``offset`` 2, 8 or 128; storing the
    raw code and ``zero_point = zero - offset`` gives exactly ``(code - zero) * scale``. 3-bit codes are
    stored in the 4-bit form (exact; no 3-bit op exists).
    """

    def __init__(self, module: QuantizedEmbedding) -> None:
        super().__init__()
        from executorch.exir.passes import _quant_patterns_and_replacements  # noqa: F401  (defines the ops)

        bits = module.scheme.bits
        self.storage_bits = {2: 2, 3: 4, 4: 4, 8: 8}[bits]
        codes = module.codes.to(torch.int32)
        vocab, dim = codes.shape
        if self.storage_bits == 8:
            packed = (codes - 128).to(torch.int8)
        elif self.storage_bits == 4:
            if dim % 2:
                raise TargetError(f"a 4-bit embedding needs an even width, not {dim}")
            c = codes.reshape(vocab, dim // 2, 2)
            packed = ((c[..., 0] << 4) | c[..., 1]).to(torch.uint8)  # even element in the high nibble
        else:
            if dim % 4:
                raise TargetError(f"a 2-bit embedding needs a width divisible by 4, not {dim}")
            c = codes.reshape(vocab, dim // 4, 4)
            packed = (c[..., 0] | (c[..., 1] << 2) | (c[..., 2] << 4) | (c[..., 3] << 6)).to(torch.uint8)
        offset = {2: 2, 4: 8, 8: 128}[self.storage_bits]
        self.qmin, self.qmax = -offset, offset - 1
        self.register_buffer("packed", packed.contiguous())
        self.register_buffer("scales", module.scales.to(torch.float32).contiguous())
        zp = module.zeros.to(torch.float32) - offset
        self.register_buffer("zero_points", zp.contiguous() if bool(zp.any()) else None)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        op = {2: torch.ops.quantized_decomposed.embedding_2bit, 4: torch.ops.quantized_decomposed.embedding_4bit, 8: torch.ops.quantized_decomposed.embedding_byte}[self.storage_bits]
        return op.dtype(self.packed, self.scales, self.zero_points, self.qmin, self.qmax, ids, dtype=torch.float32)


class ExecuTorchKVCache(nn.Module):
    """Keys and values ``[1, max_seq_len, n_kv_heads, head_dim]`` per layer, written in place by
    ``llama::update_cache`` at ``input_pos[0]`` (positions of one call are consecutive)."""

    def __init__(self, n_layers: int, n_kv_heads: int, max_seq_len: int, head_dim: int) -> None:
        super().__init__()
        self.max_seq_len = max_seq_len
        for i in range(n_layers):
            self.register_buffer(f"k_{i}", torch.zeros(1, max_seq_len, n_kv_heads, head_dim), persistent=False)
            self.register_buffer(f"v_{i}", torch.zeros(1, max_seq_len, n_kv_heads, head_dim), persistent=False)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor, input_pos: torch.Tensor):
        kc, vc = getattr(self, f"k_{layer}"), getattr(self, f"v_{layer}")
        start = input_pos[0].item()
        torch._check(start >= 0)
        torch._check(start < self.max_seq_len)
        torch.ops.llama.update_cache(k.transpose(1, 2), kc, start)
        torch.ops.llama.update_cache(v.transpose(1, 2), vc, start)
        return kc, vc, start


def custom_sdpa(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, start_pos, scale: float) -> torch.Tensor:
    """q [B, H, T, D] -> [B, H, T, D]; causal over cache slots ``0 .. start_pos + T - 1``."""
    out = torch.ops.llama.custom_sdpa(q.transpose(1, 2), k_cache, v_cache, start_pos, None, 0.0, True, scale)
    return out.transpose(1, 2)


def load_executorch_ops() -> None:
    """Register ExecuTorch's LLM ops (update_cache, custom_sdpa) and quantized kernels, ahead of time and
    in the runtime."""
    with quiet():
        from executorch.extension.llm.custom_ops import custom_ops  # noqa: F401
        import executorch.kernels.quantized  # noqa: F401


def build_executorch_lm(loaded, scheme: str = "8da4w", max_seq_len: int = 1024):
    """The decoder exactly as it is exported (an eager torch module): our codes in XNNPACK's linear
    pattern, ExecuTorch's KV cache and SDPA. Returns ``(lm, plans)``."""
    from edgequant.export.llm import DecoderLM

    plans = plan_model(loaded, scheme)  # first: a scheme XNNPACK cannot hold fails before anything heavy is imported
    load_executorch_ops()

    split = ResidualSplit()  # shared: linears that take the same input tensor split it once

    def linear_fn(name: str, module: nn.Module) -> nn.Module:
        plan = plans[name]
        if plan.kind.startswith("fp32"):
            return float_linear(module)
        lin = xnnpack_linear(module, plan)
        return ResidualPassLinear(lin, split) if scheme == "8da4w-r" else lin

    def embed_fn(name: str, module: nn.Module) -> nn.Module:
        if isinstance(module, QuantizedEmbedding):
            return ExecuTorchQuantizedEmbedding(module)
        emb = nn.Embedding(module.num_embeddings, module.embedding_dim)
        emb.weight = nn.Parameter(module.weight.detach().float().clone(), requires_grad=False)
        return emb

    with quiet():
        lm = DecoderLM.from_loaded(loaded, max_seq_len=max_seq_len, linear_fn=linear_fn, embed_fn=embed_fn)
    spec = lm.spec
    lm.cache = ExecuTorchKVCache(spec.n_layers, spec.n_kv_heads, spec.max_seq_len, spec.head_dim)
    lm.attention = custom_sdpa
    return lm.eval(), plans


# ----------------------------------------------------------------------------------------------------------
# lowering


@contextlib.contextmanager
def quiet():
    """Silence the warnings and INFO logs torch.export, torchao and ExecuTorch print while lowering."""
    loggers = [logging.getLogger(n) for n in ("", "executorch", "torchao", "torch", "root")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(max(lg.level, logging.WARNING))
        try:
            yield
        finally:
            for lg, lv in zip(loggers, levels):
                lg.setLevel(lv)


def _op_name(target) -> str:
    s = str(target)
    if s.startswith("<EdgeOpOverload: "):
        return s[len("<EdgeOpOverload: ") :].split(">", 1)[0]
    return getattr(target, "__name__", s) if s.startswith("<") else s


_MATMULS = ("aten.linear.default", "aten.mm.default", "aten.addmm.default", "aten.bmm.default")


def delegation_summary(graph_module: torch.fx.GraphModule) -> dict:
    """Which operators ran inside XNNPACK and which stayed outside (counts by operator)."""
    inside: collections.Counter = collections.Counter()
    outside: collections.Counter = collections.Counter()
    calls = 0
    for node in graph_module.graph.nodes:
        if node.op == "get_attr" and node.name.startswith("lowered_module"):
            for n in getattr(graph_module, node.name).original_module.graph.nodes:
                name = _op_name(n.target)
                if n.op == "call_function" and "." in name:
                    inside[name] += 1
        elif node.op == "call_function":
            name = _op_name(node.target)
            if name.startswith("auto_functionalized") and node.args:  # an in-place op (the KV-cache update)
                name = _op_name(node.args[0])
            if name == "executorch_call_delegate":
                calls += 1
            elif "." in name and not any(k in name for k in ("sym_size", "_assert_scalar", "_local_scalar_dense")):
                outside[name] += 1
    linears_outside = sum(outside.get(k, 0) for k in _MATMULS)
    return {
        "delegate_calls": calls,
        "inside": dict(sorted(inside.items())),
        "outside": dict(sorted(outside.items())),
        "linears_outside": linears_outside,
    }


def _partitioners(delegate: str):
    from executorch.backends.xnnpack.partition.config.gemm_configs import LinearConfig
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackDynamicallyQuantizedPartitioner, XnnpackPartitioner
    from executorch.backends.xnnpack.partition.config.xnnpack_config import ConfigPrecisionType

    dq = XnnpackDynamicallyQuantizedPartitioner()
    if delegate == "all":
        return [dq, XnnpackPartitioner()]
    if delegate == "linear":
        return [dq, XnnpackPartitioner(configs=[LinearConfig], config_precisions=ConfigPrecisionType.FP32)]
    raise EdgequantError(f"unknown delegate mode '{delegate}'; use 'all' or 'linear'")


def metadata(lm, loaded, scheme: str, max_chunk: int, plans: dict[str, LinearPlan]) -> dict:
    from edgequant.targets.runtime import ArtifactMeta

    spec = lm.spec
    info = loaded.quant_info
    kinds = collections.Counter(p.label for p in plans.values())
    meta = ArtifactMeta.for_decoder(
        spec,
        target="xnnpack",
        scheme=scheme,
        source=loaded.path,
        extra={
            "max_chunk": max_chunk,
            "checkpoint_scheme": info.default_scheme.describe() if info else "float",
            "linears": dict(kinds),
            "embedding": type(lm.embed_tokens).__name__,
        },
    )
    return {
        "get_max_seq_len": max_chunk,
        "get_max_context_len": spec.max_seq_len,
        "get_vocab_size": spec.vocab_size,
        "get_n_layers": spec.n_layers,
        "get_bos_id": -1 if spec.bos_id is None else spec.bos_id,
        "get_eos_ids": list(spec.eos_ids) or [-1],
        "use_kv_cache": True,
        "use_sdpa_with_kv_cache": True,
        "enable_dynamic_shape": max_chunk > 1,
        META_METHOD: meta.to_json(),
    }


def lower(lm, constant_methods: dict, max_chunk: int, delegate: str = "all", progress=None):
    """torch.export -> edge -> XNNPACK -> ExecuTorch program. Returns (ExecutorchProgramManager, summary)."""
    from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig, to_edge_transform_and_lower
    from executorch.exir.passes import MemoryPlanningPass
    from executorch.exir.passes.sym_shape_eval_pass import ConstraintBasedSymShapeEvalPass
    from torch.export import Dim, export

    step = progress or (lambda msg: None)
    n = min(2, max_chunk)
    tokens = torch.ones(1, n, dtype=torch.long)
    pos = torch.arange(n, dtype=torch.long)
    dynamic = None
    if max_chunk > 1:  # one Dim shared by both inputs ties their lengths together
        d = Dim("tokens", min=1, max=max_chunk)
        dynamic = ({1: d}, {0: d})
    with quiet(), torch.no_grad():
        step("torch.export")
        ep = export(lm, (tokens, pos), dynamic_shapes=dynamic, strict=False)
        ep = ep.run_decompositions({})
        step("lowering to XNNPACK")
        edge = to_edge_transform_and_lower(
            ep,
            partitioner=_partitioners(delegate),
            compile_config=EdgeCompileConfig(_check_ir_validity=False),
            constant_methods=constant_methods,
        )
        summary = delegation_summary(edge.exported_program().graph_module)
        step("ExecuTorch program")
        program = edge.to_executorch(
            ExecutorchBackendConfig(
                extract_delegate_segments=True,
                do_quant_fusion_and_const_prop=True,
                memory_planning_pass=MemoryPlanningPass(alloc_graph_input=False),
                sym_shape_eval_pass=ConstraintBasedSymShapeEvalPass(),
            )
        )
    return program, summary


# ----------------------------------------------------------------------------------------------------------
# reading our weights back out of the program


def xnnpack_weight_blobs(module: QuantizedLinear, plan: LinearPlan) -> dict[str, bytes]:
    """The named data XNNPACK's delegate must hold for ``module``, keyed as XNNPACK keys it (by content
    hash): int4 weights two codes a byte, the first in the low nibble, stored as ``signed + 8`` (for
    symmetric codes, the code itself), with bfloat16 scales; int8 per-channel weights as the signed codes
    with float32 scales; ``fp32w`` the dequantized weight as float32."""
    import hashlib

    def sha(b: bytes) -> str:
        return hashlib.sha256(b).hexdigest()

    if plan.kind == "fp32w":
        w = module.weight.to(torch.float32).contiguous().numpy().tobytes()
        return {sha(w): w}
    q = signed_codes(module)
    if plan.kind == "qb4w":
        u = (q.to(torch.int16) + 8).to(torch.uint8).reshape(-1)
        weight = (u[1::2] << 4 | u[::2]).contiguous()
        scale = module.scales.to(torch.float32).to(torch.bfloat16).contiguous().view(torch.uint16)
    elif plan.kind == "qc8w":
        weight = q.contiguous()
        scale = module.scales.to(torch.float32).reshape(-1).contiguous()
    else:
        raise ValueError(plan.kind)
    w, sc = weight.numpy().tobytes(), scale.numpy().tobytes()
    return {sha(w): w, "scale_" + sha(sc): sc}


def program_named_data(pte: bytes) -> dict[str, bytes]:
    """The named data (XNNPACK's weights and scales, keyed by content hash) of a serialized program."""
    from executorch.exir._serialize._program import deserialize_pte_binary

    nd = deserialize_pte_binary(pte).named_data
    if nd is None:
        return {}
    return {k: bytes(nd.buffers[e.buffer_index]) for k, e in nd.pte_data.items()}


def verify_program_weights(pte: bytes, modules: dict[str, nn.Module], plans: dict[str, LinearPlan]) -> dict:
    """Check that every quantized linear's codes and scales (as XNNPACK stores them) are in the program,
    byte for byte. Returns counts and the names of any that are missing."""
    data = program_named_data(pte)
    ok, missing = 0, []
    for name, plan in plans.items():
        if plan.kind == "fp32":
            continue
        if all(data.get(k) == b for k, b in xnnpack_weight_blobs(modules[name], plan).items()):
            ok += 1
        else:
            missing.append(name)
    return {"verified": ok, "missing": missing}


def scale_rounding(modules: dict[str, nn.Module], plans: dict[str, LinearPlan]) -> dict:
    """How far XNNPACK's bfloat16 int4 scales are from ours (relative), over every int4 linear."""
    worst, total, n, exact = 0.0, 0.0, 0, 0
    for name, plan in plans.items():
        if plan.kind != "qb4w":
            continue
        s = modules[name].scales.to(torch.float32)
        rel = ((s.to(torch.bfloat16).float() - s).abs() / s.abs().clamp_min(1e-30)).reshape(-1)
        worst = max(worst, float(rel.max()))
        total += float(rel.sum())
        n += rel.numel()
        exact += int((rel == 0).sum())
    return {"max_rel": worst, "mean_rel": total / n, "exact_fraction": exact / n} if n else {}


def export_executorch(
    loaded,
    art_path: Path,
    scheme: str = "8da4w",
    max_seq_len: int = 1024,
    *,
    max_chunk: int | None = None,
    delegate: str = "all",
    progress: bool = True,
    **_ignored,
) -> dict:
    """Write ``art_path`` (a .pte) for the quantized checkpoint ``loaded``; returns what was done.

    ``max_chunk``: the most tokens one call takes (default min(128, max_seq_len)); ``delegate``: "all"
    (every operator XNNPACK supports, the default) or "linear" (only the linears, as ExecuTorch's llama
    export does by default).
    """
    from tqdm import tqdm

    plan_model(loaded, scheme)
    try:
        import executorch  # noqa: F401
        import torchao  # noqa: F401
    except ImportError as e:
        from edgequant.errors import MissingDependencyError

        raise MissingDependencyError(f"{e.name} is not installed: pip install 'edgequant[executorch]'") from None
    t0 = time.time()
    max_chunk = min(max_chunk or DEFAULT_MAX_CHUNK, max_seq_len)
    if max_chunk < 1:
        raise EdgequantError("max_chunk must be at least 1")
    lm, plans = build_executorch_lm(loaded, scheme, max_seq_len)
    constant_methods = metadata(lm, loaded, scheme, max_chunk, plans)
    bar = tqdm(total=3, desc="xnnpack", unit="step", disable=not progress or None, leave=False)

    def step(msg: str) -> None:
        bar.set_postfix_str(msg)
        if step.started:
            bar.update(1)
        step.started = True

    step.started = False
    try:
        program, summary = lower(lm, constant_methods, max_chunk, delegate, step)
        pte = program.buffer
        Path(art_path).write_bytes(pte)
        bar.update(1)
    finally:
        bar.close()
    sources = {n: loaded.model.get_submodule(n) for n in plans}
    weights = verify_program_weights(pte, sources, plans)
    if weights["missing"]:
        raise EdgequantError(f"internal error: the program lacks the weights of {', '.join(weights['missing'][:3])} as XNNPACK stores them")
    return {
        "max_chunk": max_chunk,
        "delegate": delegate,
        "linears": dict(collections.Counter(p.label for p in plans.values())),
        "embedding": type(lm.embed_tokens).__name__,
        "weights_verified": weights["verified"],
        "int4_scale_rounding": scale_rounding(sources, plans),
        **summary,
        "lowering_s": round(time.time() - t0, 2),
    }
