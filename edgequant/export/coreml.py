"""Core ML exporter: a quantized checkpoint to an ``.mlpackage`` (ML Program, iOS 18 / macOS 15).

The program is written directly in MIL from :class:`~edgequant.export.llm.DecoderLM` instead of tracing
it: tracing runs into torch-version and frontend gaps (``int()`` of a traced index, in-place
``index_copy_`` on a state, mixed-dtype attention), while the MIL builder gives exactly the ops we
choose, which is also the op set :mod:`edgequant.export.mil_eval` evaluates. What it builds:

- inputs ``tokens`` int32 ``[1, T]`` with ``T`` a range dimension (1 .. max_seq_len), so prefill and
  decode are one function, and ``start_pos`` int32 ``[1]`` (the position of ``tokens[0]``);
- states ``k_cache_{i}`` / ``v_cache_{i}`` float16 ``[1, n_kv_heads, max_seq_len, head_dim]`` per layer
  (DecoderLM's static cache buffers); new keys/values are written with ``slice_update`` and attention
  reads the first ``start_pos + T`` slots;
- output ``logits`` float16 ``[1, T, vocab]``;
- float16 compute, with the RMSNorms in float32 (as DecoderLM computes them: a float16 sum of squares
  overflows once a hidden state's norm passes 256);
- every quantized linear (and a quantized embedding) as ``constexpr_blockwise_shift_scale`` holding
  OUR codes: symmetric schemes as signed data ``code - 2^(b-1)`` without an offset, asymmetric ones as
  unsigned codes with the zero points as offsets (Core ML computes ``scale * (data - offset)``), the
  float16 scales as they are. 2- and 3-bit codes are stored in 4-bit containers (Core ML has no
  narrower block-wise type), still exact;
- the runner's metadata in ``user_defined_metadata`` (``edgequant.meta``: an :class:`ArtifactMeta`
  JSON, and the plain keys ``vocab_size``, ``max_seq_len``, ``bos_id``, ``eos_ids``).
"""
from __future__ import annotations

import json
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgequant.errors import EdgequantError, MissingDependencyError, TargetError

INPUT_TOKENS = "tokens"
INPUT_START = "start_pos"
OUTPUT_LOGITS = "logits"
META_KEY = "edgequant.meta"
EMBED_OP = "embed"
WEIGHT_MODES = ("quantized", "float16")


def import_coremltools():
    """coremltools, imported quietly: at import it warns about every optional integration whose version it
    has not tested (scikit-learn, torch 2.13) and about the Core ML framework missing off macOS."""
    import logging

    logging.getLogger("coremltools").setLevel(logging.ERROR)
    try:
        import coremltools as ct
    except ImportError:
        raise MissingDependencyError("coremltools is not installed: pip install 'edgequant[coreml]'") from None
    return ct


def linear_op_name(module_name: str) -> str:
    return module_name.replace(".", "_")


def weight_var_name(module_name: str) -> str:
    """The name of a module's weight in the program (MIL names have no dots)."""
    return module_name.replace(".", "_") + "_weight"


def state_names(n_layers: int) -> list[str]:
    return [f"{kv}_cache_{i}" for i in range(n_layers) for kv in ("k", "v")]


# --------------------------------------------------------------------------------------------- weights


def blockwise_arrays(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, bits: int) -> dict:
    """Our ``(codes - zeros) * scales`` as the inputs of ``constexpr_blockwise_shift_scale``.

    Returns ``{"data", "scale", "offset" (or None), "dtype"}`` with numpy arrays tagged with coremltools'
    sub-byte dtypes. A tensor whose zero points are all ``2^(b-1)`` (every symmetric scheme) becomes signed
    data without an offset (``code - 2^(b-1)`` fits int4/int8 exactly); any other becomes unsigned codes
    with the zero points as an unsigned offset of the same type.
    """
    from coremltools.converters.mil.mil import types

    container = 4 if bits <= 4 else 8
    if bits > 8:
        raise TargetError(f"Core ML block-wise weights hold at most 8 bits, not {bits}; quantize to 4 or 8 bits")
    c = codes.to(torch.int16)
    z = zeros.to(torch.int16)
    half = 1 << (container - 1)
    scale = scales.to(torch.float16).numpy()
    if bool((z == (1 << (bits - 1))).all()):
        data = (c - (1 << (bits - 1))).numpy()
        assert data.min() >= -half and data.max() < half
        dtype = types.np_int4_dtype if container == 4 else np.int8
        return {"data": data.astype(dtype), "scale": scale, "offset": None, "dtype": "int4" if container == 4 else "int8"}
    dtype = types.np_uint4_dtype if container == 4 else np.uint8
    return {
        "data": c.numpy().astype(dtype),
        "scale": scale,
        "offset": z.numpy().astype(dtype),
        "dtype": "uint4" if container == 4 else "uint8",
    }


def dequantized_fp16(module: nn.Module) -> np.ndarray:
    """The float16 weight Core ML decompresses for ``module`` (our float32 weight rounded once: each
    ``(code - zero) * scale`` is exact in float32 and IEEE rounding of it is what float16 arithmetic gives)."""
    return module.weight.detach().to(torch.float16).numpy()


def _is_quantized(module: nn.Module) -> bool:
    return all(hasattr(module, a) for a in ("codes", "scales", "zeros", "scheme"))


def _same_quantized(a: nn.Module, b: nn.Module) -> bool:
    return (
        _is_quantized(a)
        and _is_quantized(b)
        and a.codes.shape == b.codes.shape
        and torch.equal(a.codes, b.codes)
        and torch.equal(a.scales, b.scales)
        and torch.equal(a.zeros, b.zeros)
    )


# --------------------------------------------------------------------------------------------- program


class _ProgramWriter:
    """Emits the MIL ops of one DecoderLM inside an open ``Function``."""

    def __init__(self, lm, weights: str, names: dict[int, str] | None = None) -> None:
        from coremltools.converters.mil import Builder as mb
        from coremltools.converters.mil.mil import types

        self.mb, self.types = mb, types
        self.lm, self.spec, self.weights = lm, lm.spec, weights
        self.linears: dict[str, dict] = {}  # name -> what was stored (for the report and the round-trip check)
        self._consts: dict[int, object] = {}  # id(tensor) -> Var, so tied tables are stored once
        self.names = names or {}  # id(module) -> its name in the checkpoint

    def name_of(self, module: nn.Module, default: str) -> str:
        return self.names.get(id(module), default)

    # -- weights
    def weight(self, name: str, module: nn.Module):
        """The [out, in] float16 weight Var of a linear or embedding module (constexpr when quantized)."""
        mb = self.mb
        key = id(module.codes) if _is_quantized(module) else id(module.weight)
        if key not in self._consts and _is_quantized(module):  # tied tables untied into equal copies
            key = next((k for k, (_, _, m) in self._consts.items() if _same_quantized(m, module)), key)
        if key in self._consts:
            var, first, _ = self._consts[key]
            self.linears[name] = dict(self.linears[first], shared_with=first)
            return var
        if _is_quantized(module) and self.weights == "quantized":
            arrs = blockwise_arrays(module.codes, module.scales, module.zeros, module.scheme.bits)
            kw = dict(data=arrs["data"], scale=arrs["scale"], name=weight_var_name(name))
            if arrs["offset"] is not None:
                kw["offset"] = arrs["offset"]
            var = mb.constexpr_blockwise_shift_scale(**kw)
            self.linears[name] = {"kind": "blockwise", "dtype": arrs["dtype"], "bits": module.scheme.bits,
                                  "group_size": module.scheme.group_size, "shape": list(module.codes.shape)}
        else:
            w = dequantized_fp16(module) if _is_quantized(module) else module.weight.detach().to(torch.float16).numpy()
            var = mb.const(val=w, name=weight_var_name(name))
            self.linears[name] = {"kind": "float16", "shape": list(w.shape)}
        self._consts[key] = (var, name, module)
        return var

    def linear(self, x, default_name: str, module: nn.Module):
        mb = self.mb
        name = self.name_of(module, default_name)
        kw = {}
        if getattr(module, "bias", None) is not None:
            kw["bias"] = module.bias.detach().to(torch.float16).numpy()
        return mb.linear(x=x, weight=self.weight(name, module), name=linear_op_name(name), **kw)

    def rms_norm(self, x, norm: nn.Module, name: str):
        """DecoderLM's RMSNorm: float32 inside, back to float16."""
        mb = self.mb
        x32 = mb.cast(x=x, dtype="fp32", name=f"{name}_in")
        ms = mb.reduce_mean(x=mb.mul(x=x32, y=x32), axes=[-1], keep_dims=True)
        r = mb.rsqrt(x=ms, epsilon=float(norm.eps))
        w = norm.weight.detach().float().numpy()
        y = mb.mul(x=mb.mul(x=x32, y=r), y=w)
        return mb.cast(x=y, dtype="fp16", name=f"{name}_out")

    # -- the decoder
    def build(self, tokens, start_pos, states: dict):
        mb, s, lm = self.mb, self.spec, self.lm
        rep = s.n_heads // s.n_kv_heads
        half = s.head_dim // 2

        start = mb.squeeze(x=start_pos, name="start")  # scalar int32
        t = mb.slice_by_index(x=mb.shape(x=tokens), begin=[1], end=[2], squeeze_mask=[True], name="seq_len")
        end = mb.add(x=start, y=t, name="end")
        pos = mb.range_1d(start=start, end=end, step=1, name="positions")  # [T]

        # embedding (the table may be shared with lm_head)
        table = self.weight(self.name_of(lm.embed_tokens, "model.embed_tokens"), lm.embed_tokens)
        x = mb.gather(x=table, indices=tokens, axis=0, name=EMBED_OP)  # [1, T, hidden]

        # rotary tables, exactly DecoderLM.rope for every position, rounded to float16 once
        cos_t, sin_t = lm.rope(torch.arange(s.max_seq_len), torch.float16)
        cos = mb.gather(x=cos_t[0, 0].numpy(), indices=pos, axis=0)
        sin = mb.gather(x=sin_t[0, 0].numpy(), indices=pos, axis=0)
        cos = mb.expand_dims(x=cos, axes=[0, 1], name="rope_cos")  # [1, 1, T, D]
        sin = mb.expand_dims(x=sin, axes=[0, 1], name="rope_sin")

        # additive causal mask over the filled cache slots: query at p sees slots 0..p
        slots = mb.range_1d(start=0, end=end, step=1, name="slots")  # [S]
        allowed = mb.less_equal(x=mb.expand_dims(x=slots, axes=[0]), y=mb.expand_dims(x=pos, axes=[1]))  # [T, S]
        # -3e4 for "masked" (the torch frontend's choice too): far below any score, and no inf arithmetic
        mask = mb.mul(x=mb.sub(x=np.float16(1.0), y=mb.cast(x=allowed, dtype="fp16")), y=np.float16(-3e4))
        if rep > 1:
            mask = mb.tile(x=mask, reps=[rep, 1])  # rows r*T + t, matching the grouped query layout below
        mask = mb.identity(x=mask, name="attn_mask")

        zero = np.array([0], dtype=np.int32)
        end1 = mb.expand_dims(x=end, axes=[0])
        start1 = mb.expand_dims(x=start, axes=[0])
        upd_begin = mb.concat(values=[zero, zero, start1, zero], axis=0, name="cache_write_begin")
        upd_end = mb.concat(values=[np.array([1, s.n_kv_heads], np.int32), end1, np.array([s.head_dim], np.int32)], axis=0, name="cache_write_end")
        read_end = mb.identity(x=upd_end, name="cache_read_end")

        def rope(v, name):
            lo = mb.slice_by_index(x=v, begin=[0, 0, 0, 0], end=[0, 0, 0, half], end_mask=[True, True, True, False])
            hi = mb.slice_by_index(x=v, begin=[0, 0, 0, half], end=[0, 0, 0, 0], end_mask=[True, True, True, True])
            rot = mb.concat(values=[mb.mul(x=hi, y=np.float16(-1.0)), lo], axis=-1)
            return mb.add(x=mb.mul(x=v, y=cos), y=mb.mul(x=rot, y=sin), name=name)

        for i, blk in enumerate(lm.layers):
            p = f"model.layers.{i}"
            h = self.rms_norm(x, blk.input_layernorm, f"l{i}_input_norm")
            q = mb.reshape(x=self.linear(h, f"{p}.self_attn.q_proj", blk.q_proj), shape=[1, -1, s.n_heads, s.head_dim])
            k = mb.reshape(x=self.linear(h, f"{p}.self_attn.k_proj", blk.k_proj), shape=[1, -1, s.n_kv_heads, s.head_dim])
            v = mb.reshape(x=self.linear(h, f"{p}.self_attn.v_proj", blk.v_proj), shape=[1, -1, s.n_kv_heads, s.head_dim])
            if blk.q_norm is not None:
                q = self.rms_norm(q, blk.q_norm, f"l{i}_q_norm")
                k = self.rms_norm(k, blk.k_norm, f"l{i}_k_norm")
            q = rope(mb.transpose(x=q, perm=[0, 2, 1, 3]), f"l{i}_q")  # [1, H, T, D]
            k = rope(mb.transpose(x=k, perm=[0, 2, 1, 3]), f"l{i}_k")  # [1, KV, T, D]
            v = mb.transpose(x=v, perm=[0, 2, 1, 3], name=f"l{i}_v")

            caches = []
            for kind, new in (("k", k), ("v", v)):
                st = states[f"{kind}_cache_{i}"]
                old = mb.read_state(input=st, name=f"l{i}_{kind}_cache_read")
                upd = mb.slice_update(x=old, update=new, begin=upd_begin, end=upd_end, name=f"l{i}_{kind}_cache_new")
                upd = mb.coreml_update_state(state=st, value=upd, name=f"l{i}_{kind}_cache_write")
                # the filled slots 0 .. start+T-1; the masks keep the static dims static in the saved types
                used = mb.slice_by_index(x=upd, begin=[0, 0, 0, 0], end=read_end, begin_mask=[True] * 4,
                                         end_mask=[True, True, False, True], name=f"l{i}_{kind}_cache_used")
                caches.append(used)
            keys, values = caches  # [1, KV, S, D]

            # grouped-query attention without repeating keys: the `rep` query heads of a kv head are
            # stacked along the query axis ([1, KV, rep*T, D]); sdpa scales by 1/sqrt(head_dim) as DecoderLM
            qg = mb.reshape(x=q, shape=[1, s.n_kv_heads, -1, s.head_dim])
            a = mb.scaled_dot_product_attention(query=qg, key=keys, value=values, attn_mask=mask, name=f"l{i}_attention")
            a = mb.reshape(x=a, shape=[1, s.n_heads, -1, s.head_dim])
            a = mb.reshape(x=mb.transpose(x=a, perm=[0, 2, 1, 3]), shape=[1, -1, s.n_heads * s.head_dim])
            x = mb.add(x=x, y=self.linear(a, f"{p}.self_attn.o_proj", blk.o_proj), name=f"l{i}_attn_residual")

            h = self.rms_norm(x, blk.post_attention_layernorm, f"l{i}_post_norm")
            g = mb.silu(x=self.linear(h, f"{p}.mlp.gate_proj", blk.gate_proj))
            u = self.linear(h, f"{p}.mlp.up_proj", blk.up_proj)
            x = mb.add(x=x, y=self.linear(mb.mul(x=g, y=u), f"{p}.mlp.down_proj", blk.down_proj), name=f"l{i}_out")

        h = self.rms_norm(x, lm.norm, "final_norm")
        logits = self.linear(h, "lm_head", lm.lm_head)
        return mb.identity(x=logits, name=OUTPUT_LOGITS)


def decoder_for(loaded, max_seq_len: int):
    """DecoderLM of ``loaded`` with a float16 cache, and the checkpoint name of each of its linears and
    its embedding (``id(module) -> name``)."""
    from edgequant.export.llm import DecoderLM

    names: dict[int, str] = {}

    def record(name: str, module: nn.Module) -> nn.Module:
        names.setdefault(id(module), name)
        return module

    lm = DecoderLM.from_loaded(loaded, max_seq_len=max_seq_len, linear_fn=record, embed_fn=record, cache_dtype=torch.float16)
    return lm, names


def build_program(lm, weights: str = "quantized", names: dict[int, str] | None = None):
    """The MIL program (iOS 18 opset) of ``lm`` and a record of how each weight was stored."""
    ct = import_coremltools()
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import Function, Program, get_new_symbol, types

    s = lm.spec
    if s.n_heads % s.n_kv_heads:
        raise TargetError(f"{s.n_heads} attention heads do not group over {s.n_kv_heads} key/value heads")
    T = get_new_symbol()
    specs: "OrderedDict[str, object]" = OrderedDict()
    specs[INPUT_TOKENS] = mb.TensorSpec(shape=(1, T), dtype=types.int32)
    specs[INPUT_START] = mb.TensorSpec(shape=(1,), dtype=types.int32)
    cache_shape = (1, s.n_kv_heads, s.max_seq_len, s.head_dim)
    for n in state_names(s.n_layers):
        specs[n] = mb.StateTensorSpec(shape=cache_shape, dtype=types.fp16)
    writer = _ProgramWriter(lm, weights, names)
    with Function(specs, opset_version=ct.target.iOS18) as func:
        out = writer.build(func.inputs[INPUT_TOKENS], func.inputs[INPUT_START], {n: func.inputs[n] for n in state_names(s.n_layers)})
        func.set_outputs([out])
    prog = Program()
    prog.add_function("main", func)
    return prog, writer.linears


def export_coreml(loaded, art_path: Path, scheme: str = "blockwise", max_seq_len: int = 1024, weights: str = "quantized", verify: bool = True, **opts) -> dict:
    """Write ``art_path`` (an ``.mlpackage``) for the quantized model ``loaded``.

    ``weights="float16"`` stores every weight dequantized to float16 instead (a baseline for size and
    speed comparisons; the numbers it computes are the same). ``verify`` reads the saved package back and
    checks its interface and every weight against the checkpoint (:func:`verify_package`).
    """
    from edgequant.targets.runtime import ArtifactMeta

    if scheme != "blockwise":
        raise TargetError(f"the Core ML target stores weights block-wise ('blockwise'), not '{scheme}'")
    if weights not in WEIGHT_MODES:
        raise TargetError(f"weights must be one of {', '.join(WEIGHT_MODES)}, not '{weights}'")
    if opts:
        raise EdgequantError(f"unknown Core ML export option(s): {', '.join(sorted(opts))}")
    ct = import_coremltools()
    t0 = time.time()
    lm, names = decoder_for(loaded, max_seq_len)
    spec = lm.spec
    prog, stored = build_program(lm, weights, names)
    func = prog.functions["main"]
    func.set_input_types((
        ct.TensorType(name=INPUT_TOKENS, shape=(1, ct.RangeDim(1, max_seq_len, default=1)), dtype=np.int32),
        ct.TensorType(name=INPUT_START, shape=(1,), dtype=np.int32),
    ))
    t_build = time.time() - t0
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = ct.convert(
            prog,
            convert_to="mlprogram",
            minimum_deployment_target=ct.target.iOS18,
            # the program already carries its precision (float16, float32 norms); no automatic casts
            compute_precision=ct.precision.FLOAT32,
            skip_model_load=True,
        )
    info = loaded.quant_info
    scheme_desc = info.default_scheme.describe() if info else "float"
    meta = ArtifactMeta.for_decoder(
        spec,
        target="coreml",
        scheme=scheme_desc if weights == "quantized" else "float16",
        source=loaded.path,
        extra={"weights": weights, "n_kv_heads": spec.n_kv_heads, "head_dim": spec.head_dim, "inputs": [INPUT_TOKENS, INPUT_START], "output": OUTPUT_LOGITS},
    )
    md = model.user_defined_metadata
    md[META_KEY] = meta.to_json()
    md["vocab_size"] = str(spec.vocab_size)
    md["max_seq_len"] = str(spec.max_seq_len)
    md["bos_id"] = str(-1 if spec.bos_id is None else spec.bos_id)
    md["eos_ids"] = json.dumps(list(spec.eos_ids))
    model.short_description = f"{loaded.name}: decoder LM, {meta.scheme} weights, stateful KV cache ({max_seq_len} positions)"
    model.input_description[INPUT_TOKENS] = "token ids [1, T], T from 1 to max_seq_len"
    model.input_description[INPUT_START] = "position of tokens[0] (the cache holds positions 0 .. start_pos-1)"
    model.output_description[OUTPUT_LOGITS] = "float16 logits [1, T, vocab]"
    model.save(str(art_path))
    convert_s = time.time() - t0
    proof = verify_package(Path(art_path), lm, names, weights) if verify else None
    if proof and proof["problems"]:
        raise RuntimeError(f"the Core ML package does not hold the checkpoint's weights (an edgequant bug): {'; '.join(proof['problems'][:5])}")
    counts: dict[str, int] = {}
    for r in stored.values():
        if "shared_with" not in r:
            key = r["dtype"] if r["kind"] == "blockwise" else "float16"
            counts[key] = counts.get(key, 0) + 1
    return {
        "weights": weights,
        "stored_tensors": counts,
        "tied_embedding": any("shared_with" in r for r in stored.values()),
        "build_seconds": round(t_build, 2),
        "convert_seconds": round(convert_s, 2),
        "verify_seconds": round(time.time() - t0 - convert_s, 2) if proof else None,
        "verified_weights": proof["weights_checked"] if proof else None,
        "deployment_target": "iOS18/macOS15",
    }


# --------------------------------------------------------------------------------------------- proof


def _module_table(lm, names: dict[int, str]) -> list[tuple[str, nn.Module, str, str]]:
    """(checkpoint name, module, op that uses its weight, that op's weight input) for every weight."""
    rows = [(names.get(id(lm.embed_tokens), "model.embed_tokens"), lm.embed_tokens, EMBED_OP, "x")]
    for i, blk in enumerate(lm.layers):
        for attr in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
            m = getattr(blk, attr)
            rows.append((names.get(id(m), f"model.layers.{i}.{attr}"), m, "", "weight"))
    rows.append((names.get(id(lm.lm_head), "lm_head"), lm.lm_head, "", "weight"))
    return [(n, m, op or linear_op_name(n), key) for n, m, op, key in rows]


def verify_package(path: Path, lm, names: dict[int, str], weights: str = "quantized") -> dict:
    """Read the saved package back and compare it with ``lm``: the interface (inputs, output, states) and,
    for every linear and the embedding, the weight the program feeds that op. Quantized modules must be
    ``constexpr_blockwise_shift_scale`` ops whose data, offsets and scales equal our codes, zero points
    and scales bit for bit, and whose decompression (re-implemented from the op's specification) equals
    our weight rounded once to float16. Returns a report; ``report["problems"]`` lists any mismatch."""
    from edgequant.export.mil_eval import MILProgram, decompress_blockwise

    prog = MILProgram(path)
    s = lm.spec
    problems: list[str] = []

    # interface
    desc = prog.spec.description
    ins = {d.name: d.type.multiArrayType for d in desc.input}
    if list(ins) != [INPUT_TOKENS, INPUT_START]:
        problems.append(f"inputs are {list(ins)}, expected {[INPUT_TOKENS, INPUT_START]}")
    else:
        tok = ins[INPUT_TOKENS]
        rng = [(r.lowerBound, r.upperBound) for r in tok.shapeRange.sizeRanges]
        if rng != [(1, 1), (1, s.max_seq_len)] or tok.dataType != tok.INT32:
            problems.append(f"'{INPUT_TOKENS}' is {tok.ArrayDataType.Name(tok.dataType)} with ranges {rng}, expected INT32 [1, 1..{s.max_seq_len}]")
        if list(ins[INPUT_START].shape) != [1] or ins[INPUT_START].dataType != tok.INT32:
            problems.append(f"'{INPUT_START}' is not an INT32 [1]")
    outs = [(d.name, d.type.multiArrayType.dataType) for d in desc.output]
    if outs != [(OUTPUT_LOGITS, desc.output[0].type.multiArrayType.FLOAT16)]:
        problems.append(f"outputs are {outs}, expected float16 '{OUTPUT_LOGITS}'")
    want_states = {n: [1, s.n_kv_heads, s.max_seq_len, s.head_dim] for n in state_names(s.n_layers)}
    got_states = {n: list(shape) for n, (shape, dt) in prog.state_specs.items() if dt == "fp16"}
    if got_states != want_states:
        problems.append(f"states differ: {sorted(set(got_states.items()) ^ set(want_states.items()))[:4]}")

    # weights
    ops = {op.name: op for op in prog.func.operations}
    checked, constexpr_vars, max_abs = 0, set(), 0.0
    for name, module, op_name, key in _module_table(lm, names):
        op = ops.get(op_name)
        if op is None or key not in op.inputs:
            problems.append(f"{name}: no op '{op_name}' in the program")
            continue
        producer = op.inputs[key].op
        w32 = module.weight.detach().float()
        want16 = w32.to(torch.float16).numpy()
        if _is_quantized(module) and weights == "quantized":
            if producer is None or producer.op_type != "constexpr_blockwise_shift_scale":
                problems.append(f"{name}: weight is {getattr(producer, 'op_type', 'an input')}, not constexpr_blockwise_shift_scale")
                continue
            exp = blockwise_arrays(module.codes, module.scales, module.zeros, module.scheme.bits)
            data = np.asarray(producer.data.val)
            scale = np.asarray(producer.scale.val)
            off = producer.inputs.get("offset")
            offset = None if off is None else np.asarray(off.val)
            from coremltools.converters.mil.mil import types

            if types.builtin_to_string(producer.data.dtype) != exp["dtype"]:
                problems.append(f"{name}: data type {types.builtin_to_string(producer.data.dtype)}, expected {exp['dtype']}")
            if data.shape != exp["data"].shape or not np.array_equal(data.astype(np.int16), exp["data"].astype(np.int16)):
                problems.append(f"{name}: stored codes differ from the checkpoint's")
            if scale.dtype != np.float16 or scale.shape != exp["scale"].shape or not np.array_equal(scale.view(np.uint16), exp["scale"].view(np.uint16)):
                problems.append(f"{name}: stored scales differ from the checkpoint's (bit for bit)")
            if (offset is None) != (exp["offset"] is None) or (
                offset is not None and not np.array_equal(offset.astype(np.int16), exp["offset"].astype(np.int16))
            ):
                problems.append(f"{name}: stored zero points differ from the checkpoint's")
            got = decompress_blockwise(data, scale, offset)
            constexpr_vars.add(producer.outputs[0].name)
        else:
            if producer is None or producer.op_type != "const":
                problems.append(f"{name}: float weight is {getattr(producer, 'op_type', 'an input')}, not a const")
                continue
            got = np.asarray(producer.outputs[0].val)
        if got.shape != want16.shape or not np.array_equal(got.view(np.uint16), want16.view(np.uint16)):
            problems.append(f"{name}: the program's weight is not our weight in float16")
        else:
            max_abs = max(max_abs, float((torch.from_numpy(got.astype(np.float32)) - w32).abs().max()))
        checked += 1
    n_constexpr = len(prog.ops("constexpr_blockwise_shift_scale"))
    if weights == "quantized" and n_constexpr != len(constexpr_vars):
        problems.append(f"{n_constexpr} block-wise weights in the program, {len(constexpr_vars)} expected")
    return {
        "weights_checked": checked,
        "blockwise_weights": n_constexpr,
        "exact": not problems,
        "max_abs_vs_float32_weight": max_abs,  # float16 rounding of (code - zero) * scale, nothing else
        "problems": problems,
    }
