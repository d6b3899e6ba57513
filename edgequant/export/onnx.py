"""ONNX exporter: the quantized decoder as ``model.onnx`` for ONNX Runtime, with OUR codes and scales.

The graph has the layout ONNX Runtime GenAI and Optimum use: ``input_ids``, ``attention_mask``,
``position_ids`` and ``past_key_values.N.key/value`` in, ``logits`` and ``present.N.key/value`` out,
with dynamic batch and sequence axes.

How the weights get in. The decoder (:class:`FunctionalDecoderLM`) is exported with the dynamo
exporter, but every module that holds a weight (each linear, the embedding, the tied output head) is
first replaced by a *site*: a torch custom op with no weights, which the exporter translates into a
placeholder node of a private domain. The exporter therefore never sees, folds or converts a weight.
The exported graph is then rewritten with onnx-ir: each placeholder becomes the real nodes, built
directly from the checkpoint's integer codes, float16-exact scales and zero points:

- ``matmulnbits`` (default): ``com.microsoft.MatMulNBits`` (2, 4 or 8 bits, block 32/64/128, packed
  zero points for asymmetric schemes; symmetric ones use the operator's implicit zero 2^(bits-1),
  which is ours). A quantized embedding becomes ``com.microsoft.GatherBlockQuantized``.
- ``qdq``: standard ``DequantizeLinear`` (opset 21) with ``block_size`` over weights stored [in, out]
  (int4/int8 without zero point for symmetric schemes, uint4/uint8 with one for asymmetric), then
  ``MatMul``: the form NPU toolchains and other runtimes read.

Scales are written as float32: the float16 values exactly, since ONNX Runtime computes in float32 and
``(code - zero) * scale`` is then exact. A float lm_head tied to the embedding (SmolLM2) stays one
initializer, used by ``Gather`` and by ``Gemm(transB=1)``. Per-channel schemes (group -1) are written
as blocks that repeat the row's scale and zero point, which is the same weight. What no node can hold
(3 bits; 2 bits in ``qdq``) raises a :class:`TargetError` naming what works.

``float_weights=True`` writes the dequantized float32 weights instead (plain MatMul): the reference
for size and speed comparisons.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgequant.errors import TargetError

SCHEMES = ("matmulnbits", "qdq")
MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
GENAI_FILE = "genai_config.json"
META_KEY = "edgequant"
OPSET = 21
MATMULNBITS_BITS = (2, 4, 8)
GATHER_BITS = (4, 8)
QDQ_BITS = (4, 8)
BLOCK_SIZES = (32, 64, 128)
#: above this many bytes of weights the initializers go to ``model.onnx.data`` (protobuf stops at 2 GiB)
EXTERNAL_DATA_BYTES = 1_500_000_000

_SITE_DOMAIN = "edgequant.site"  # placeholder nodes; never in a written file
_KEY_NAMES = "past_key_values.{}.key"
_VALUE_NAMES = "past_key_values.{}.value"
_PRESENT_KEY = "present.{}.key"
_PRESENT_VALUE = "present.{}.value"


# ---------------------------------------------------------------------------------------------------
# sites: weightless custom ops the exporter turns into placeholder nodes


@torch.library.custom_op("edgequant::onnx_linear_site", mutates_args=())
def _linear_site(x: torch.Tensor, site: str, out_features: int) -> torch.Tensor:
    raise RuntimeError("an ONNX export site has no weights: it only exists while exporting")


@_linear_site.register_fake
def _(x, site, out_features):
    return x.new_empty((*x.shape[:-1], out_features))


@torch.library.custom_op("edgequant::onnx_embedding_site", mutates_args=())
def _embedding_site(ids: torch.Tensor, site: str, dim: int) -> torch.Tensor:
    raise RuntimeError("an ONNX export site has no weights: it only exists while exporting")


@_embedding_site.register_fake
def _(ids, site, dim):
    return ids.new_empty((*ids.shape, dim), dtype=torch.float32)


class _LinearSite(nn.Module):
    def __init__(self, site: str, out_features: int) -> None:
        super().__init__()
        self.site, self.out_features = site, out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.edgequant.onnx_linear_site(x, self.site, self.out_features)


class _EmbeddingSite(nn.Module):
    def __init__(self, site: str, dim: int) -> None:
        super().__init__()
        self.site, self.dim = site, dim

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.ops.edgequant.onnx_embedding_site(ids, self.site, self.dim)


@lru_cache(maxsize=1)
def _translation_table() -> dict:
    """onnxscript translations of the two sites into placeholder nodes (schemas registered once per process)."""
    import onnx
    from onnx.defs import OpSchema
    from onnxscript.values import Op, Opset

    def register(name: str, in_type: str) -> None:
        if onnx.defs.has(name, _SITE_DOMAIN):
            return
        onnx.defs.register_schema(
            OpSchema(
                name, _SITE_DOMAIN, 1, doc="edgequant export placeholder for a weight-holding module",
                inputs=[OpSchema.FormalParameter("x", "T")], outputs=[OpSchema.FormalParameter("y", "U")],
                type_constraints=[("T", [in_type], ""), ("U", ["tensor(float)"], "")],
                attributes=[OpSchema.Attribute("site", OpSchema.AttrType.STRING, "module name"), OpSchema.Attribute("n", OpSchema.AttrType.INT, "output width")],
            )
        )

    register("Linear", "tensor(float)")
    register("Embedding", "tensor(int64)")
    opset = Opset(_SITE_DOMAIN, 1)
    linear_op, embedding_op = Op(opset, "Linear"), Op(opset, "Embedding")

    def linear(x, site: str, out_features: int):
        return linear_op(x, site=site, n=out_features)

    def embedding(ids, site: str, dim: int):
        return embedding_op(ids, site=site, n=dim)

    return {torch.ops.edgequant.onnx_linear_site.default: linear, torch.ops.edgequant.onnx_embedding_site.default: embedding}


# ---------------------------------------------------------------------------------------------------
# what each site holds


@dataclass
class _Site:
    kind: str  # "linear", "embedding" or "tied_head"
    module: nn.Module
    tied_to: str = ""


def _is_quantized(m: nn.Module) -> bool:
    from edgequant.compress.qlinear import QuantizedEmbedding, QuantizedLinear

    return isinstance(m, (QuantizedLinear, QuantizedEmbedding))


def _per_channel_block(k: int) -> int:
    """The block a per-channel row is written in (its scale repeated per block): the largest that
    divides ``k``, else 128 with the last block padded."""
    for b in (128, 64, 32, 16):
        if k % b == 0:
            return b
    return 128


def validate_scheme(sites: dict[str, _Site], scheme: str) -> None:
    """Raise TargetError for a quantized module no node of ``scheme`` can hold."""
    for name, s in sites.items():
        m = s.module
        if not _is_quantized(m):
            continue
        qs = m.scheme
        if s.kind == "embedding":
            allowed = GATHER_BITS if scheme == "matmulnbits" else QDQ_BITS
            if qs.bits not in allowed:
                raise TargetError(
                    f"{name} is a {qs.bits}-bit embedding; ONNX ({scheme}) holds {'/'.join(map(str, allowed))}-bit embeddings: "
                    "re-quantize the embedding with one of those or leave it in float"
                )
            if qs.group_size == -1 and m.embedding_dim % 16 != 0 and scheme == "matmulnbits":
                raise TargetError(f"{name}: a per-channel embedding needs a width divisible by 16 for GatherBlockQuantized; use --scheme qdq")
            continue
        if scheme == "matmulnbits" and qs.bits not in MATMULNBITS_BITS:
            raise TargetError(
                f"{name} is {qs.describe()}: MatMulNBits takes 2-, 4- and 8-bit codes (block 32/64/128 or per channel); "
                "re-quantize with --bits 2, 4 or 8"
            )
        if scheme == "qdq" and qs.bits not in QDQ_BITS:
            raise TargetError(
                f"{name} is {qs.describe()}: DequantizeLinear (opset {OPSET}) holds int4/uint4 and int8/uint8 codes; "
                "re-quantize with --bits 4 or 8, or export 2-bit weights with --scheme matmulnbits"
            )


# ---------------------------------------------------------------------------------------------------
# weights in the layouts the nodes read


def matmulnbits_tensors(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, bits: int, group_size: int, symmetric: bool):
    """(B uint8 [N, blocks, blob], scales float32 [N, blocks], zero_points uint8 [N, ceil(blocks*bits/8)] or None, block).

    Codes are packed low bits first along K within each block, as the checkpoint packs them; a
    per-channel scheme repeats each row's scale (and zero) over blocks."""
    from edgequant.compress.grid import pack_codes

    n, k = codes.shape
    block = _per_channel_block(k) if group_size == -1 else group_size
    blocks = math.ceil(k / block)
    if group_size == -1:
        scales = scales.expand(n, blocks)
        zeros = zeros.expand(n, blocks)
    pad = blocks * block - k
    c = torch.nn.functional.pad(codes, (0, pad)) if pad else codes
    packed = pack_codes(c.reshape(n * blocks, block), bits).reshape(n, blocks, block * bits // 8)
    zp = None if symmetric else pack_codes(zeros.contiguous(), bits)
    return packed.numpy(), scales.float().contiguous().numpy(), (None if zp is None else zp.numpy()), block


def _ir_tensor(array: np.ndarray, name: str, dtype=None):
    import onnx_ir as ir

    return ir.Tensor(np.ascontiguousarray(array), dtype=dtype, name=name)


class _Rewriter:
    """Replaces each placeholder node of the exported graph by real nodes built from the checkpoint."""

    def __init__(self, model, sites: dict[str, _Site], scheme: str, float_weights: bool, accuracy_level: int) -> None:
        import onnx_ir as ir

        self.ir = ir
        self.model, self.graph = model, model.graph
        self.sites, self.scheme = sites, scheme
        self.float_weights, self.accuracy_level = float_weights, accuracy_level
        self.initializers: dict[str, object] = {}
        self.uses_msft = False
        self.weight_bytes = 0
        self.counts: dict[str, int] = {}

    # -- helpers
    def init(self, name: str, array: np.ndarray, dtype=None):
        if name in self.initializers:
            return self.initializers[name]
        t = _ir_tensor(array, name, dtype)
        v = self.ir.Value(name=name, shape=self.ir.Shape(array.shape), type=self.ir.TensorType(t.dtype), const_value=t)
        self.graph.register_initializer(v)
        self.initializers[name] = v
        self.weight_bytes += t.nbytes
        return v

    def node(self, op: str, inputs, domain: str = "", name: str = "", **attrs):
        n = self.ir.node(op, inputs, attributes=attrs, domain=domain, name=name or None)
        key = f"{domain}.{op}" if domain else op
        self.counts[key] = self.counts.get(key, 0) + 1
        return n

    def run(self) -> None:
        placeholders = [n for n in self.graph if n.domain == _SITE_DOMAIN]
        for n in placeholders:
            site = n.attributes["site"].as_string()
            if site not in self.sites:
                raise RuntimeError(f"exported graph names an unknown weight site {site}")
            new_nodes = self.lower(site, self.sites[site], n.inputs[0])
            self.ir.convenience.replace_nodes_and_values(self.graph, n, [n], new_nodes, [n.outputs[0]], [new_nodes[-1].outputs[0]])
        leftover = [n for n in self.graph if n.domain == _SITE_DOMAIN]
        if leftover:
            raise RuntimeError(f"{len(leftover)} weight sites were not lowered")
        self.model.opset_imports.pop(_SITE_DOMAIN, None)
        if self.uses_msft:
            self.model.opset_imports["com.microsoft"] = 1

    # -- lowering
    def lower(self, name: str, site: _Site, x) -> list:
        m = site.module
        if site.kind == "embedding":
            return self.embedding(name, m, x)
        if site.kind == "tied_head":
            return self.tied_head(name, site.tied_to, x)
        if _is_quantized(m) and not self.float_weights:
            if self.scheme == "matmulnbits":
                return self.matmulnbits(name, m, x)
            return self.qdq_linear(name, m, x)
        w = m.weight.detach().float()
        bias = getattr(m, "bias", None)
        return self.float_linear(name, w, bias, x)

    def bias_add(self, name: str, bias, nodes: list) -> list:
        if bias is None:
            return nodes
        b = self.init(f"{name}.bias", bias.detach().float().numpy())
        return nodes + [self.node("Add", [nodes[-1].outputs[0], b], name=f"{name}/Add")]

    def float_linear(self, name: str, w: torch.Tensor, bias, x) -> list:
        wt = self.init(f"{name}.weight_t", w.t().contiguous().numpy())  # [in, out]
        return self.bias_add(name, bias, [self.node("MatMul", [x, wt], name=f"{name}/MatMul")])

    def matmulnbits(self, name: str, m, x) -> list:
        s = m.scheme
        packed, scales, zp, block = matmulnbits_tensors(m.codes, m.scales, m.zeros, s.bits, s.group_size, s.symmetric)
        inputs = [x, self.init(f"{name}.qweight", packed), self.init(f"{name}.scales", scales)]
        inputs.append(None if zp is None else self.init(f"{name}.qzeros", zp))
        if m.bias is not None:
            inputs += [None, self.init(f"{name}.bias", m.bias.detach().float().numpy())]
        while inputs[-1] is None:
            inputs.pop()
        self.uses_msft = True
        attrs = dict(K=m.in_features, N=m.out_features, bits=s.bits, block_size=block)
        if self.accuracy_level:
            attrs["accuracy_level"] = self.accuracy_level
        return [self.node("MatMulNBits", inputs, domain="com.microsoft", name=f"{name}/MatMulNBits", **attrs)]

    def qdq_weight(self, name: str, codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, scheme, axis_rows: bool):
        """DequantizeLinear of codes laid out with the blocked axis given by ``axis_rows`` (False: blocks
        run along axis 0 of ``codes`` ([in, out] for a linear); True: along axis 1 ([vocab, dim]))."""
        ir = self.ir
        bits, sym = scheme.bits, scheme.symmetric
        signed = {4: ir.DataType.INT4, 8: ir.DataType.INT8}[bits]
        unsigned = {4: ir.DataType.UINT4, 8: ir.DataType.UINT8}[bits]
        if sym:  # code - 2^(b-1) as a signed integer, zero point 0 (the standard symmetric form)
            q = codes.to(torch.int16) - scheme.implicit_zero
            q = q.numpy().astype(np.int8)
            qv = self.init(f"{name}.qweight", q, signed)
        else:
            qv = self.init(f"{name}.qweight", codes.numpy(), unsigned)
        per_channel = scheme.group_size == -1
        blocked_axis = 1 if axis_rows else 0
        if per_channel:  # one scale per output channel: per-axis quantization over the other axis
            sc = scales[:, 0]
            zp = zeros[:, 0]
            attrs = dict(axis=0 if axis_rows else 1)
        else:
            sc, zp = (scales, zeros) if axis_rows else (scales.t(), zeros.t())
            attrs = dict(axis=blocked_axis, block_size=scheme.group_size)
        inputs = [qv, self.init(f"{name}.scales", sc.float().contiguous().numpy())]
        if not sym:
            inputs.append(self.init(f"{name}.qzeros", zp.contiguous().numpy(), unsigned))
        return self.node("DequantizeLinear", inputs, name=f"{name}/DequantizeLinear", **attrs)

    def qdq_linear(self, name: str, m, x) -> list:
        # weights [in, out]: the codes transposed (the same codes), blocks along axis 0
        dq = self.qdq_weight(name, m.codes.t().contiguous(), m.scales, m.zeros, m.scheme, axis_rows=False)
        mm = self.node("MatMul", [x, dq.outputs[0]], name=f"{name}/MatMul")
        return self.bias_add(name, m.bias, [dq, mm])

    def embedding(self, name: str, m, ids) -> list:
        if not _is_quantized(m) or self.float_weights:
            w = self.init(f"{name}.weight", m.weight.detach().float().contiguous().numpy())
            return [self.node("Gather", [w, ids], name=f"{name}/Gather", axis=0)]
        s = m.scheme
        if self.scheme == "qdq":
            dq = self.qdq_weight(name, m.codes, m.scales, m.zeros, s, axis_rows=True)
            return [dq, self.node("Gather", [dq.outputs[0], ids], name=f"{name}/Gather", axis=0)]
        from edgequant.compress.grid import pack_codes

        dim = m.embedding_dim
        block = _per_channel_block(dim) if s.group_size == -1 else s.group_size
        scales, zeros = m.scales, m.zeros
        if s.group_size == -1:
            scales = scales.expand(-1, dim // block)
            zeros = zeros.expand(-1, dim // block)
        data = self.init(f"{name}.qweight", pack_codes(m.codes, s.bits).numpy())
        inputs = [data, ids, self.init(f"{name}.scales", scales.float().contiguous().numpy()), self.init(f"{name}.qzeros", pack_codes(zeros.contiguous(), s.bits).numpy())]
        self.uses_msft = True
        return [self.node("GatherBlockQuantized", inputs, domain="com.microsoft", name=f"{name}/GatherBlockQuantized", gather_axis=0, quantize_axis=1, block_size=block, bits=s.bits)]

    def tied_head(self, name: str, embed_name: str, x) -> list:
        """x [.., dim] @ E^T with E the (float) embedding initializer itself: Gemm(transB=1) on x
        flattened to 2-D, then the leading axes restored."""
        e = self.initializers.get(f"{embed_name}.weight")
        if e is None:  # the head may be lowered before the embedding
            emb = self.sites[embed_name].module
            e = self.init(f"{embed_name}.weight", emb.weight.detach().float().contiguous().numpy())
        vocab, dim = e.shape[0], e.shape[1]
        flat_shape = self.init(f"{name}.flat_shape", np.array([-1, dim], dtype=np.int64))
        out_last = self.init(f"{name}.out_dim", np.array([vocab], dtype=np.int64))
        shape = self.node("Shape", [x], name=f"{name}/Shape", end=-1)
        full = self.node("Concat", [shape.outputs[0], out_last], name=f"{name}/Concat", axis=0)
        flat = self.node("Reshape", [x, flat_shape], name=f"{name}/Reshape")
        gemm = self.node("Gemm", [flat.outputs[0], e], name=f"{name}/Gemm", transB=1)
        back = self.node("Reshape", [gemm.outputs[0], full.outputs[0]], name=f"{name}/Reshape_out")
        return [shape, full, flat, gemm, back]


# ---------------------------------------------------------------------------------------------------
# the exporter


def grouped_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float) -> torch.Tensor:
    """Grouped-query attention without repeating keys and values: the query heads of each key/value
    head are folded into a broadcast axis, so the graph never copies the cache per step.

    q [B, H, T, D], k/v [B, KV, S, D], mask [B, 1, T, S] (True = attend) -> [B, H, T, D].
    """
    b, h, t, d = q.shape
    kv = k.shape[1]
    qg = q.reshape(b, kv, h // kv, t, d)  # query head i reads key/value head i // (H / KV)
    scores = torch.matmul(qg, k.unsqueeze(2).transpose(-1, -2)) * scale  # [B, KV, rep, T, S]
    # the lowest finite value, not -inf: a row with nothing to attend to (a left pad) stays finite
    # instead of turning into NaN and reaching real tokens through its values
    scores = scores.masked_fill(~mask[:, :, None], torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores.float(), dim=-1).to(v.dtype)
    return torch.matmul(probs, v.unsqueeze(2)).reshape(b, h, t, d)


class _RMSNorm(nn.Module):
    """RMSNorm written as ``x / sqrt(mean(x^2) + eps) * w``: the pattern ONNX Runtime fuses into one
    SimplifiedLayerNormalization kernel (``x * rsqrt(..)`` exports as Sqrt + Reciprocal, which it does not)."""

    def __init__(self, weight: torch.Tensor, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.detach().float().clone(), requires_grad=False)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def _swap_norms(module: nn.Module) -> None:
    from edgequant.export.llm import RMSNorm

    for name, child in list(module.named_children()):
        if isinstance(child, RMSNorm):
            setattr(module, name, _RMSNorm(child.weight, child.eps))
        else:
            _swap_norms(child)


def _build_sites(loaded, max_seq_len: int):
    from edgequant.export.llm import DecoderLM, StaticKVCache

    sites: dict[str, _Site] = {}
    embed_src: dict[str, nn.Module] = {}

    def embed_fn(name: str, m: nn.Module) -> nn.Module:
        sites[name] = _Site("embedding", m)
        embed_src[name] = m
        return _EmbeddingSite(name, m.embedding_dim)

    def linear_fn(name: str, m: nn.Module) -> nn.Module:
        if not isinstance(m, nn.Linear) and not _is_quantized(m):
            raise TargetError(f"{name} is a {type(m).__name__}, which the ONNX exporter cannot lower")
        sites[name] = _Site("linear", m)
        return _LinearSite(name, m.out_features)

    lm = DecoderLM.from_loaded(loaded, max_seq_len=max_seq_len, linear_fn=linear_fn, embed_fn=embed_fn)
    lm.cache = StaticKVCache(0, 1, 1, 1)  # the functional form carries its own cache
    lm.attention = grouped_attention
    _swap_norms(lm)
    head = loaded.adapter.lm_head
    for ename, emb in embed_src.items():
        h = sites.get(head)
        if h is not None and isinstance(h.module, nn.Linear) and isinstance(emb, nn.Embedding) and h.module.weight.data_ptr() == emb.weight.data_ptr():
            sites[head] = _Site("tied_head", h.module, tied_to=ename)
    return lm, sites


def _export_graph(lm, spec):
    """torch.onnx.export (dynamo) of the decoder with sites in place: an onnx-ir model with placeholders."""
    import warnings

    from edgequant.export.llm import FunctionalDecoderLM

    wrapper = FunctionalDecoderLM(lm).eval()
    b, t, p = 2, 3, 5  # example sizes other than 0 and 1, so no axis is specialised
    ids = torch.zeros(b, t, dtype=torch.long)
    mask = torch.ones(b, p + t, dtype=torch.long)
    pos = torch.arange(p, p + t).repeat(b, 1)
    past = tuple(torch.zeros(b, spec.n_kv_heads, p, spec.head_dim) for _ in range(2 * spec.n_layers))
    Dim = torch.export.Dim
    batch, seq, past_len, total = Dim("batch_size"), Dim("sequence_length"), Dim("past_sequence_length"), Dim("total_sequence_length")
    dynamic = ({0: batch, 1: seq}, {0: batch, 1: total}, {0: batch, 1: seq}, tuple({0: batch, 2: past_len} for _ in past))
    inputs = ["input_ids", "attention_mask", "position_ids"]
    outputs = ["logits"]
    for i in range(spec.n_layers):
        inputs += [_KEY_NAMES.format(i), _VALUE_NAMES.format(i)]
        outputs += [_PRESENT_KEY.format(i), _PRESENT_VALUE.format(i)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            wrapper, (ids, mask, pos, *past), dynamo=True, input_names=inputs, output_names=outputs, dynamic_shapes=dynamic,
            opset_version=OPSET, custom_translation_table=_translation_table(), optimize=True, verbose=False,
        )
    return program.model


def _genai_config(spec, meta) -> dict:
    """A genai_config.json in ONNX Runtime GenAI's layout (past and present grow; no shared buffer)."""
    return {
        "model": {
            "type": "llama",
            "vocab_size": spec.vocab_size,
            "context_length": spec.max_seq_len,
            "bos_token_id": spec.bos_id if spec.bos_id is not None else -1,
            "eos_token_id": list(spec.eos_ids) if len(spec.eos_ids) != 1 else spec.eos_ids[0],
            "pad_token_id": spec.eos_ids[0] if spec.eos_ids else 0,
            "decoder": {
                "filename": MODEL_FILE,
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "head_size": spec.head_dim,
                "hidden_size": spec.hidden_size,
                "num_attention_heads": spec.n_heads,
                "num_hidden_layers": spec.n_layers,
                "num_key_value_heads": spec.n_kv_heads,
                "inputs": {
                    "input_ids": "input_ids",
                    "attention_mask": "attention_mask",
                    "position_ids": "position_ids",
                    "past_key_names": "past_key_values.%d.key",
                    "past_value_names": "past_key_values.%d.value",
                },
                "outputs": {"logits": "logits", "present_key_names": "present.%d.key", "present_value_names": "present.%d.value"},
            },
        },
        "search": {"max_length": spec.max_seq_len, "past_present_share_buffer": False, "do_sample": False, "num_beams": 1},
        "edgequant": json.loads(meta.to_json()),
    }


def export_onnx(
    loaded,
    art_path: str | Path,
    scheme: str = "matmulnbits",
    max_seq_len: int = 1024,
    *,
    float_weights: bool = False,
    accuracy_level: int = 0,
    external_data: bool | None = None,
    check: bool = True,
) -> dict:
    """Write the ONNX directory ``art_path``: ``model.onnx`` (+ ``model.onnx.data`` when large) and
    ``genai_config.json``; the ArtifactMeta is also in the model's ``metadata_props``.

    ``accuracy_level`` is MatMulNBits' compute type (0: float32, exact; 4: int8 activations, faster,
    not bit-faithful). ``float_weights`` writes dequantized float32 weights (the size/speed reference).
    """
    import onnx
    import onnx_ir as ir

    from edgequant.targets.runtime import ArtifactMeta

    if scheme not in SCHEMES:
        raise TargetError(f"the onnx target has no scheme '{scheme}'; choose one of {', '.join(SCHEMES)}")
    if accuracy_level not in (0, 1, 2, 3, 4):
        raise TargetError("accuracy_level is 0 (float32, exact), 1, 2, 3 or 4 (int8 activations)")
    t0 = time.time()
    art = Path(art_path)
    lm, sites = _build_sites(loaded, max_seq_len)
    if not float_weights:
        validate_scheme(sites, scheme)
    spec = lm.spec
    model = _export_graph(lm, spec)
    t_export = time.time() - t0
    rw = _Rewriter(model, sites, scheme, float_weights, accuracy_level)
    rw.run()
    # drop anything the placeholders left unused (the exporter never saw a weight, so there is little)
    ir.passes.common.RemoveUnusedNodesPass()(model)
    ir.passes.common.RemoveUnusedOpsetsPass()(model)
    ir.passes.common.ClearMetadataAndDocStringPass()(model)  # the exporter's per-node stack traces

    info = loaded.quant_info
    qdesc = "float32" if float_weights else (info.default_scheme.describe() if info else "float")
    meta = ArtifactMeta.for_decoder(
        spec,
        target="onnx",
        scheme=f"{scheme} {qdesc}" if not float_weights else "float32",
        source=loaded.path,
        extra={
            "n_kv_heads": spec.n_kv_heads,
            "head_dim": spec.head_dim,
            "weights": "float32" if float_weights else "quantized",
            "node_style": "float" if float_weights else scheme,
            "accuracy_level": accuracy_level,
            "opset": OPSET,
        },
    )
    model.metadata_props[META_KEY] = meta.to_json()
    model.producer_name = "edgequant"
    model.graph.name = "decoder"

    art.mkdir(parents=True, exist_ok=False)
    path = art / MODEL_FILE
    use_external = rw.weight_bytes > EXTERNAL_DATA_BYTES if external_data is None else external_data
    ir.save(model, path, external_data=DATA_FILE if use_external else None)
    (art / GENAI_FILE).write_text(json.dumps(_genai_config(spec, meta), indent=2) + "\n", encoding="utf-8")
    if check:
        onnx.checker.check_model(str(path), full_check=True)
    files = {p.name: p.stat().st_size for p in sorted(art.iterdir()) if p.is_file()}
    return {
        "node_style": meta.extra["node_style"],
        "weights": meta.extra["weights"],
        "nodes": dict(sorted(rw.counts.items())),
        "weight_bytes": rw.weight_bytes,
        "files": files,
        "tied_head": any(s.kind == "tied_head" for s in sites.values()),
        "external_data": use_external,
        "opset": OPSET,
        "export_s": round(t_export, 2),
        "checked": check,
    }
