"""An evaluator of saved Core ML ML Programs, so a Core ML package is checked numerically without a Mac.

:class:`MILProgram` opens an ``.mlpackage``, reads its ML Program back from the saved protobuf and weight
blob (coremltools' MIL proto reader; Core ML itself is never needed) and executes the ``main`` function op
by op in torch, with the KV-cache states held as tensors between calls (``read_state`` copies a state,
``coreml_update_state`` -- ``write_state`` in the file -- overwrites it).

Numerics follow the program's own types: every op computes in float32 from its inputs and rounds its
result to the dtype the program declares for it (float16 for almost everything in an edgequant package,
float32 inside the RMSNorms). That is how a float16 GPU kernel with float32 accumulation behaves, so the
evaluator's logits differ from the float32 torch model by float16 effects only; a wrong op, layout, mask,
rotary table, cache write or weight shows up as a large difference instead.

Only the ops an edgequant package contains (after coremltools' optimisation passes) are implemented;
any other op raises a :class:`TargetError` naming it. Decompression of
``constexpr_blockwise_shift_scale`` is written here from the op's specification (``scale * (data -
offset)`` per block), not taken from coremltools, so it is checked independently of the exporter.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from edgequant.errors import InputError, TargetError

_TORCH_DTYPES = {
    "fp16": torch.float16,
    "fp32": torch.float32,
    "fp64": torch.float64,
    "int32": torch.int32,
    "int64": torch.int64,
    "int16": torch.int16,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}


def _dtype_name(mil_type) -> str:
    from coremltools.converters.mil.mil import types

    return types.builtin_to_string(mil_type)


def _as_tensor(v) -> torch.Tensor:
    if isinstance(v, torch.Tensor):
        return v
    a = np.asarray(v)
    if a.dtype == np.float64:
        a = a.astype(np.float32)
    if a.dtype == np.int64:
        a = a.astype(np.int32)
    return torch.from_numpy(np.ascontiguousarray(a))


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.is_floating_point() else t


def _scalar(v, default=None):
    """A const parameter as a python number (it may arrive as a 0-d tensor)."""
    if v is None:
        return default
    return v.item() if isinstance(v, torch.Tensor) else v


def _ints(v) -> list[int]:
    return [int(x) for x in np.asarray(v.cpu() if isinstance(v, torch.Tensor) else v).reshape(-1)]


def decompress_blockwise(data: np.ndarray, scale: np.ndarray, offset: np.ndarray | None) -> np.ndarray:
    """``constexpr_blockwise_shift_scale`` per its specification: ``scale[b] * (data - offset[b])`` where
    block ``b`` of element ``i`` is ``i // (data.shape / scale.shape)`` on every axis; the result has
    ``scale``'s dtype."""
    if data.ndim != scale.ndim or (offset is not None and offset.shape != scale.shape):
        raise TargetError("constexpr_blockwise_shift_scale with mismatched ranks or offset shape")
    d = data.astype(np.float32)
    s = scale.astype(np.float32)
    o = None if offset is None else offset.astype(np.float32)
    for axis, (n, m) in enumerate(zip(data.shape, scale.shape)):
        if n % m:
            raise TargetError(f"block-wise scale of {m} does not divide axis {axis} of {n}")
        if n // m > 1:
            s = np.repeat(s, n // m, axis=axis)
            if o is not None:
                o = np.repeat(o, n // m, axis=axis)
    if o is not None:
        d = d - o
    return (d * s).astype(scale.dtype)


def _slices(shape, begin, end, stride, begin_mask, end_mask, squeeze_mask):
    rank = len(shape)
    begin = _ints(begin) if begin is not None else [0] * rank
    end = _ints(end) if end is not None else [0] * rank
    stride = _ints(stride) if stride is not None else [1] * rank
    begin_mask = list(begin_mask) if begin_mask is not None else [False] * rank
    end_mask = list(end_mask) if end_mask is not None else [False] * rank
    squeeze_mask = list(squeeze_mask) if squeeze_mask is not None else [False] * rank
    idx = []
    for i in range(rank):
        if squeeze_mask[i]:
            idx.append(begin[i])
            continue
        idx.append(slice(None if begin_mask[i] else begin[i], None if end_mask[i] else end[i], stride[i]))
    return tuple(idx)


def _mask_arg(v):
    if v is None:
        return None
    return [bool(x) for x in np.asarray(v).reshape(-1)]


class MILProgram:
    """The ``main`` function of a saved ML Program, executable in torch."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        if not (path.is_dir() and (path / "Manifest.json").is_file()):
            raise InputError(f"{path} is not a Core ML package (a .mlpackage directory with Manifest.json)")
        from edgequant.export.coreml import import_coremltools

        ct = import_coremltools()
        from coremltools.converters.mil.frontend.milproto.load import load_mil_proto

        model = ct.models.MLModel(str(path), skip_model_load=True)
        spec = model.get_spec()
        if spec.WhichOneof("Type") != "mlProgram":
            raise InputError(f"{path} holds a {spec.WhichOneof('Type')} model, not an ML Program")
        self.path = path
        self.spec = spec
        self.metadata: dict[str, str] = dict(spec.description.metadata.userDefined)
        self.program = load_mil_proto(spec.mlProgram, spec.specificationVersion, model.weights_dir)
        if "main" not in self.program.functions:
            raise InputError(f"{path} has no 'main' function")
        self.func = self.program.functions["main"]
        self.input_names = [d.name for d in spec.description.input]
        self.output_names = [d.name for d in spec.description.output]
        self.state_specs: dict[str, tuple[tuple[int, ...], str]] = {}
        for d in spec.description.state:
            arr = d.type.stateType.arrayType
            dt = {arr.FLOAT16: "fp16", arr.FLOAT32: "fp32", arr.INT32: "int32"}[arr.dataType]
            self.state_specs[d.name] = (tuple(arr.shape), dt)
        self._const_cache: dict[str, torch.Tensor] = {}
        self._wide: dict[str, torch.Tensor] = {}
        self._handlers = op_handlers()
        unknown = sorted({op.op_type for op in self.func.operations} - set(self._handlers) - {"const"})
        if unknown:
            raise TargetError(f"{path} uses ML Program op(s) the evaluator does not implement: {', '.join(unknown)}")
        for op in self.func.operations:
            if op.blocks:
                raise TargetError(f"{path} has control flow ({op.op_type}); the evaluator runs straight-line programs only")

    # ---------------------------------------------------------------------------------- structure
    def ops(self, op_type: str | None = None) -> list:
        return [op for op in self.func.operations if op_type is None or op.op_type == op_type]

    def constexpr_weights(self) -> dict[str, dict]:
        """Every ``constexpr_blockwise_shift_scale`` as stored: ``{name: {data, scale, offset, data_dtype}}``."""
        out = {}
        for op in self.ops("constexpr_blockwise_shift_scale"):
            off = op.inputs.get("offset")
            out[op.outputs[0].name] = {
                "data": np.asarray(op.data.val),
                "data_dtype": _dtype_name(op.data.dtype),
                "scale": np.asarray(op.scale.val),
                "offset": None if off is None else np.asarray(off.val),
                "offset_dtype": None if off is None else _dtype_name(off.dtype),
            }
        return out

    def make_state(self) -> dict[str, torch.Tensor]:
        return {n: torch.zeros(shape, dtype=_TORCH_DTYPES[dt]) for n, (shape, dt) in self.state_specs.items()}

    # ---------------------------------------------------------------------------------- execution
    def _const(self, var) -> torch.Tensor | object:
        if var.name in self._const_cache:
            return self._const_cache[var.name]
        val = var.val
        if isinstance(val, (str, bool)) or val is None:
            return val
        t = _as_tensor(val)
        self._const_cache[var.name] = t
        self._widen(var.name, t)
        return t

    def _widen(self, name: str, t: torch.Tensor) -> None:
        """Keep a float32 copy of a large float16 constant: every op computes in float32 anyway and
        rounds its result to the declared dtype, so this only saves converting weights on every call."""
        if t.dtype == torch.float16 and t.numel() >= 4096:
            self._wide[name] = t.float()

    def predict(self, inputs: dict[str, np.ndarray | torch.Tensor], state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Outputs of ``main`` for ``inputs``; ``state`` is read and updated in place."""
        env: dict[str, object] = {}
        for name, var in self.func.inputs.items():
            if name in self.state_specs:
                env[name] = name  # a state is referenced by name
                continue
            if name not in inputs:
                raise InputError(f"missing input '{name}'")
            t = _as_tensor(inputs[name]).to(_TORCH_DTYPES[_dtype_name(var.dtype)])
            if t.dim() != var.rank:
                raise InputError(f"input '{name}' has rank {t.dim()}, the program wants {var.rank}")
            env[name] = t

        def value(v):
            if isinstance(v, (list, tuple)):
                return [value(x) for x in v]
            if v.name in self._wide:  # a float constant, held widened (its values are exact in float32)
                return self._wide[v.name]
            if v.name in env:
                return env[v.name]
            if v.op is not None and v.op.op_type == "const":
                return self._const(v)
            raise TargetError(f"variable {v.name} is used before it is computed")

        for op in self.func.operations:
            if op.op_type == "const":
                continue
            args = {k: value(v) for k, v in op.inputs.items()}
            if op.op_type.startswith("constexpr_") and op.outputs[0].name in self._const_cache:
                outs = [self._const_cache[op.outputs[0].name]]
            else:
                outs = self._handlers[op.op_type](op, args, state)
                if not isinstance(outs, (list, tuple)):
                    outs = [outs]
                outs = [self._typed(o, var, op) for o, var in zip(outs, op.outputs)]
                if op.op_type.startswith("constexpr_"):
                    self._const_cache[op.outputs[0].name] = outs[0]
                    self._widen(op.outputs[0].name, outs[0])
            for var, o in zip(op.outputs, outs):
                env[var.name] = o
        return {n: env[v.name] for n, v in zip(self.output_names, self.func.outputs)}

    @staticmethod
    def _typed(t: torch.Tensor, var, op) -> torch.Tensor:
        """Round to the declared dtype and check the declared static dims (a shape bug fails here)."""
        from coremltools.converters.mil.mil import types
        from coremltools.converters.mil.mil.types.symbolic import is_symbolic

        t = _as_tensor(t)
        dt = _TORCH_DTYPES.get(_dtype_name(var.dtype))
        if dt is None:
            raise TargetError(f"{op.op_type} {op.name}: output dtype {_dtype_name(var.dtype)} is not supported")
        t = t.to(dt)
        if types.is_tensor(var.sym_type):
            shape = var.shape
            ok = len(shape) == t.dim() and all(is_symbolic(d) or int(d) == n for d, n in zip(shape, t.shape))
            if not ok:
                raise TargetError(f"{op.op_type} {op.name}: computed shape {tuple(t.shape)}, the program declares {shape}")
        elif t.dim() != 0:
            t = t.reshape(())
        return t


def op_handlers() -> dict[str, Callable]:
    """``op_type -> fn(op, args, state)``: the numerics of every op the evaluator runs. ``args`` holds the
    op's inputs (tensors, python scalars/strings for const parameters, state names for states); each fn
    computes in float32 and the caller rounds to the op's declared output dtype."""
    def binary(fn):
        return lambda op, a, st: fn(_f32(a["x"]), _f32(a["y"]))

    def unary(fn):
        return lambda op, a, st: fn(_f32(a["x"]))

    def cast(op, a, st):
        return a["x"].to(_TORCH_DTYPES[a["dtype"]])

    def blockwise(op, a, st):
        off = a.get("offset")
        return torch.from_numpy(
            decompress_blockwise(a["data"].numpy(), a["scale"].numpy(), None if off is None else off.numpy())
        )

    def linear(op, a, st):
        y = torch.nn.functional.linear(_f32(a["x"]), _f32(a["weight"]))
        if a.get("bias") is not None:
            y = y + _f32(a["bias"])
        return y

    def matmul(op, a, st):
        x, y = _f32(a["x"]), _f32(a["y"])
        if bool(_scalar(a.get("transpose_x"), False)):
            x = x.transpose(-1, -2)
        if bool(_scalar(a.get("transpose_y"), False)):
            y = y.transpose(-1, -2)
        return torch.matmul(x, y)

    def reduce_mean(op, a, st):
        axes = _ints(a["axes"]) if a.get("axes") is not None else list(range(a["x"].dim()))
        return _f32(a["x"]).mean(dim=axes, keepdim=bool(_scalar(a.get("keep_dims"), False)))

    def reduce_sum(op, a, st):
        axes = _ints(a["axes"]) if a.get("axes") is not None else list(range(a["x"].dim()))
        return _f32(a["x"]).sum(dim=axes, keepdim=bool(_scalar(a.get("keep_dims"), False)))

    def rsqrt(op, a, st):
        eps = float(_scalar(a.get("epsilon"), 1e-12))
        return torch.rsqrt(_f32(a["x"]) + eps)

    def gather(op, a, st):
        x, idx = a["x"], a["indices"].long()
        axis = int(_scalar(a.get("axis"), 0))
        if int(_scalar(a.get("batch_dims"), 0)) != 0:
            raise TargetError("gather with batch_dims is not supported by the evaluator")
        axis %= x.dim()
        idx = torch.where(idx < 0, idx + x.shape[axis], idx)
        out = torch.index_select(x, axis, idx.reshape(-1))
        return out.reshape(*x.shape[:axis], *idx.shape, *x.shape[axis + 1 :])

    def select(op, a, st):
        return torch.where(a["cond"].bool(), _f32(a["a"]), _f32(a["b"]))

    def range_1d(op, a, st):
        s, e, d = (int(_scalar(a[k])) for k in ("start", "end", "step"))
        return torch.arange(s, e, d, dtype=torch.int32)

    def shape(op, a, st):
        return torch.tensor(list(a["x"].shape), dtype=torch.int32)

    def squeeze(op, a, st):
        x = a["x"]
        if a.get("axes") is None:
            return x.squeeze()
        out = x
        for ax in sorted((i % x.dim() for i in _ints(a["axes"])), reverse=True):
            out = out.squeeze(ax)
        return out

    def expand_dims(op, a, st):
        out = a["x"]
        rank = out.dim() + len(_ints(a["axes"]))
        for ax in sorted(i % rank for i in _ints(a["axes"])):
            out = out.unsqueeze(ax)
        return out

    def slice_by_index(op, a, st):
        x = a["x"]
        idx = _slices(x.shape, a.get("begin"), a.get("end"), a.get("stride"), _mask_arg(a.get("begin_mask")),
                      _mask_arg(a.get("end_mask")), _mask_arg(a.get("squeeze_mask")))
        return x[idx]  # a view: no handler writes into its inputs

    def slice_update(op, a, st):
        x = a["x"].clone()
        idx = _slices(x.shape, a.get("begin"), a.get("end"), a.get("stride"), _mask_arg(a.get("begin_mask")),
                      _mask_arg(a.get("end_mask")), _mask_arg(a.get("squeeze_mask")))
        target = x[idx]
        upd = a["update"]
        if tuple(target.shape) != tuple(upd.shape):
            raise TargetError(f"slice_update {op.name}: update of shape {tuple(upd.shape)} into a slice of {tuple(target.shape)}")
        x[idx] = upd.to(x.dtype)
        return x

    def concat(op, a, st):
        if bool(_scalar(a.get("interleave"), False)):
            raise TargetError("concat with interleave is not supported by the evaluator")
        vals = [_as_tensor(v) for v in a["values"]]
        dt = vals[0].dtype
        axis = int(_scalar(a["axis"]))
        return torch.cat([v.to(dt).reshape(v.shape if v.dim() else (1,)) for v in vals], dim=axis)

    def reshape(op, a, st):
        x = a["x"]
        shp = _ints(a["shape"])
        # iOS 17: a 0 copies the matching dim counted from the right
        out = []
        for i, d in enumerate(shp):
            if d == 0:
                j = x.dim() - (len(shp) - i)
                out.append(x.shape[j] if j >= 0 else 1)
            else:
                out.append(d)
        return x.reshape(out)

    def transpose(op, a, st):
        return a["x"].permute(_ints(a["perm"]))

    def tile(op, a, st):
        return a["x"].repeat(_ints(a["reps"]))

    def read_state(op, a, st):
        return st[a["input"]]  # states are replaced, never written into, so no copy is needed

    def update_state(op, a, st):
        name = a["state"]
        if tuple(st[name].shape) != tuple(a["value"].shape):
            raise TargetError(f"state {name}: value of shape {tuple(a['value'].shape)}, state {tuple(st[name].shape)}")
        st[name] = a["value"].to(st[name].dtype)
        return a["value"]

    def sdpa(op, a, st):
        q, k, v = _f32(a["query"]), _f32(a["key"]), _f32(a["value"])
        scores = torch.matmul(q, k.transpose(-1, -2)) / float(np.sqrt(q.shape[-1]))
        m = a.get("attn_mask")
        if m is not None:
            scores = scores.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else scores + _f32(m)
        return torch.matmul(torch.softmax(scores, dim=-1), v)

    def softmax(op, a, st):
        return torch.softmax(_f32(a["x"]), dim=int(_scalar(a.get("axis"), -1)))

    return {
        "add": binary(torch.add),
        "sub": binary(torch.sub),
        "mul": binary(torch.mul),
        "real_div": binary(torch.div),
        "maximum": binary(torch.maximum),
        "minimum": binary(torch.minimum),
        "less": binary(torch.lt),
        "less_equal": binary(torch.le),
        "greater": binary(torch.gt),
        "greater_equal": binary(torch.ge),
        "equal": binary(torch.eq),
        "not_equal": binary(torch.ne),
        "silu": unary(torch.nn.functional.silu),
        "sigmoid": unary(torch.sigmoid),
        "sqrt": unary(torch.sqrt),
        "exp": unary(torch.exp),
        "sin": unary(torch.sin),
        "cos": unary(torch.cos),
        "identity": lambda op, a, st: a["x"],
        "cast": cast,
        "rsqrt": rsqrt,
        "constexpr_blockwise_shift_scale": blockwise,
        "linear": linear,
        "matmul": matmul,
        "reduce_mean": reduce_mean,
        "reduce_sum": reduce_sum,
        "gather": gather,
        "select": select,
        "range_1d": range_1d,
        "shape": shape,
        "squeeze": squeeze,
        "expand_dims": expand_dims,
        "slice_by_index": slice_by_index,
        "slice_update": slice_update,
        "concat": concat,
        "reshape": reshape,
        "transpose": transpose,
        "tile": tile,
        "read_state": read_state,
        "coreml_update_state": update_state,
        "scaled_dot_product_attention": sdpa,
        "softmax": softmax,
    }
