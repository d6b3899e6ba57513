"""The ONNX runtime: an ONNX directory run in an ONNX Runtime session, past keys/values kept between calls.

The model (see :mod:`edgequant.export.onnx`) takes ``past_key_values.N.key/value`` and returns
``present.N.key/value``; this runtime feeds each call's presents back as the next call's past (as
OrtValues, without copies) and trims them when a caller restarts at an earlier position.
"""
from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from edgequant.errors import EdgequantError, InputError, MissingDependencyError
from edgequant.targets.runtime import ArtifactMeta, LLMRuntime

MODEL_FILE = "model.onnx"
META_KEY = "edgequant"


def model_path(path: Path) -> Path:
    path = Path(path)
    p = path / MODEL_FILE if path.is_dir() else path
    if not p.is_file():
        raise InputError(f"{path} is not an ONNX artifact: expected {p}")
    return p


class OnnxRuntime(LLMRuntime):
    def __init__(self, path: Path, threads: int | None = None, provider: str = "CPUExecutionProvider") -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise MissingDependencyError("onnxruntime is not installed: pip install 'edgequant[onnx]'") from None
        self._ort = ort
        self.path = model_path(path)
        self.threads = threads
        if provider not in ort.get_available_providers():
            raise EdgequantError(f"ONNX Runtime provider {provider} is not available here; available: {', '.join(ort.get_available_providers())}")
        self.provider = provider
        self.accuracy_level = 0
        self.session = self._session()
        custom = self.session.get_modelmeta().custom_metadata_map
        if META_KEY not in custom:
            raise InputError(f"{self.path} has no edgequant metadata: export it with `edgequant export --target onnx`")
        self.meta = ArtifactMeta.from_json(custom[META_KEY])
        level = int(self.meta.extra.get("accuracy_level", 0))
        if level != self.accuracy_level:  # an artifact exported for int8 activations runs that way
            self.accuracy_level = level
            self.session = self._session()
        self._output_names = [o.name for o in self.session.get_outputs()]
        self.n_layers = self.meta.n_layers
        self.n_kv_heads = int(self.meta.extra["n_kv_heads"])
        self.head_dim = int(self.meta.extra["head_dim"])
        self._past: list | None = None  # OrtValues key_0, value_0, key_1, ...
        self._len = 0

    def _session(self, profile_dir: str | None = None):
        ort = self._ort
        so = ort.SessionOptions()
        if self.threads:
            so.intra_op_num_threads = int(self.threads)
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.log_severity_level = 3
        # ONNX Runtime fuses DequantizeLinear+MatMul into MatMulNBits computing with int8 activations
        # unless told otherwise: keep the artifact's own precision (0: float32, the exact weights)
        so.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", str(self.accuracy_level))
        if profile_dir is not None:
            so.enable_profiling = True
            so.profile_file_prefix = str(Path(profile_dir) / "ort_profile")
        try:
            return ort.InferenceSession(str(self.path), so, providers=[self.provider])
        except Exception as e:  # noqa: BLE001 - ONNX Runtime raises its own exception types
            raise InputError(f"ONNX Runtime cannot load {self.path}: {str(e).strip().splitlines()[0]}") from None

    def reset(self) -> None:
        self._past = None
        self._len = 0

    def _empty_past(self) -> list:
        z = np.zeros((1, self.n_kv_heads, 0, self.head_dim), dtype=np.float32)
        return [self._ort.OrtValue.ortvalue_from_numpy(z) for _ in range(2 * self.n_layers)]

    def _past_at(self, start_pos: int) -> list:
        if start_pos == 0 or self._past is None:
            if start_pos != 0:
                raise EdgequantError(f"position {start_pos} follows nothing: the cache is empty (start at 0)")
            return self._empty_past()
        if start_pos == self._len:
            return self._past
        if start_pos > self._len:
            raise EdgequantError(f"position {start_pos} skips positions: the cache holds {self._len}")
        # restart at an earlier position: keep the first start_pos entries
        return [self._ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v.numpy()[:, :, :start_pos])) for v in self._past]

    def _feeds(self, tokens: torch.Tensor, start_pos: int) -> tuple[dict, int]:
        ids = torch.as_tensor(tokens, dtype=torch.long).reshape(1, -1).numpy()
        t = ids.shape[1]
        if t == 0:
            raise EdgequantError("forward needs at least one token")
        past = self._past_at(start_pos)
        feeds = {
            "input_ids": self._ort.OrtValue.ortvalue_from_numpy(ids),
            "attention_mask": self._ort.OrtValue.ortvalue_from_numpy(np.ones((1, start_pos + t), dtype=np.int64)),
            "position_ids": self._ort.OrtValue.ortvalue_from_numpy(np.arange(start_pos, start_pos + t, dtype=np.int64)[None]),
        }
        for i in range(self.n_layers):
            feeds[f"past_key_values.{i}.key"] = past[2 * i]
            feeds[f"past_key_values.{i}.value"] = past[2 * i + 1]
        return feeds, t

    def _run(self, session, tokens: torch.Tensor, start_pos: int) -> np.ndarray:
        feeds, t = self._feeds(tokens, start_pos)
        outs = session.run_with_ort_values(self._output_names, feeds)
        self._past = list(outs[1:])
        self._len = start_pos + t
        return outs[0].numpy()

    def forward(self, tokens: torch.Tensor, start_pos: int) -> torch.Tensor:
        logits = self._run(self.session, tokens, start_pos)
        return torch.from_numpy(np.ascontiguousarray(logits[0], dtype=np.float32))

    def per_op_profile(self, tokens: torch.Tensor, gen: int) -> list[dict] | None:
        """Prefill ``tokens`` and decode ``gen`` tokens greedily in a profiling session; ONNX Runtime's
        own trace summed per operator type (rows of {op, calls, ms, share}, largest first)."""
        tokens = torch.as_tensor(tokens, dtype=torch.long).reshape(-1)
        with tempfile.TemporaryDirectory(prefix="edgequant-ort-profile-") as d:
            session = self._session(profile_dir=d)
            saved = (self._past, self._len)
            try:
                runs = 0
                for _ in range(2):  # the first pass warms the session up; only the second is counted
                    self.reset()
                    logits = self._run(session, tokens, 0)
                    pos = tokens.numel()
                    for _ in range(max(0, gen - 1)):
                        tok = int(np.argmax(logits[0, -1]))
                        logits = self._run(session, torch.tensor([tok]), pos)
                        pos += 1
                    runs = max(1, gen)
                trace = session.end_profiling()
                rows = summarize_profile(json.loads(Path(trace).read_text(encoding="utf-8")), skip_runs=runs)
            finally:
                self._past, self._len = saved
                del session
        return rows


def summarize_profile(events: list[dict], skip_runs: int = 0) -> list[dict]:
    """Kernel time per operator type from an ONNX Runtime profiling trace (Chrome trace JSON), leaving
    out the node events of the first ``skip_runs`` session runs (warm-up)."""
    calls: dict[str, int] = defaultdict(int)
    micros: dict[str, float] = defaultdict(float)
    starts = sorted(ev["ts"] for ev in events if ev.get("cat") == "Session" and ev.get("name") == "model_run")
    since = starts[skip_runs] if 0 < skip_runs < len(starts) else -1
    for ev in events:
        if ev.get("ts", 0) < since:
            continue
        if ev.get("cat") != "Node" or not str(ev.get("name", "")).endswith("_kernel_time"):
            continue
        args = ev.get("args", {})
        op = args.get("op_name") or ev["name"].rsplit("_kernel_time", 1)[0]
        provider = args.get("provider", "")
        key = op if provider in ("", "CPUExecutionProvider") else f"{op} ({provider})"
        calls[key] += 1
        micros[key] += float(ev.get("dur", 0))
    total = sum(micros.values()) or 1.0
    rows = [{"op": op, "calls": calls[op], "ms": round(micros[op] / 1000.0, 3), "share": round(micros[op] / total, 4)} for op in micros]
    return sorted(rows, key=lambda r: -r["ms"])
