"""Running a ``.pte`` with ExecuTorch's Python runtime (pybindings), XNNPACK on the CPU.

The program's ``forward(tokens [1, T], input_pos [T])`` returns logits ``[1, T, vocab]`` and writes the
keys and values of those positions into its KV cache (mutable buffers that live as long as the loaded
module). Attention reads cache slots ``0 .. input_pos[-1]`` only, so a new sequence that starts at
position 0 overwrites the previous one and :meth:`ExecuTorchRuntime.reset` has nothing to clear: stale
slots past the current position are never read. (Positions must be filled in order: a call at
``start_pos`` assumes slots ``0 .. start_pos - 1`` hold this sequence.)

Threads: ExecuTorch's CPU threadpool (which XNNPACK and the optimized kernels share) is process-wide;
``threads=N`` resizes it with ``_unsafe_reset_threadpool(N)``.
"""
from __future__ import annotations

import collections
import contextlib
import os
import tempfile
from pathlib import Path

import torch

from edgequant.errors import EdgequantError, InputError
from edgequant.targets.runtime import ArtifactMeta, LLMRuntime


def _portable_lib():
    from edgequant.export.executorch import load_executorch_ops

    capture = _StderrCapture()
    try:
        with capture():  # the runtime's CPU probing prints a few lines on import
            from executorch.extension.pybindings import portable_lib

            load_executorch_ops()  # the program's llama:: and quantized_decomposed:: kernels
    finally:
        capture.close()
    return portable_lib


def _scalar(module, method: str):
    if method not in module.method_names():
        return None
    out = module.run_method(method, [])
    if isinstance(out, (list, tuple)):
        out = [o.item() if isinstance(o, torch.Tensor) else o for o in out]
        return out[0] if len(out) == 1 else out
    return out


def read_meta(module, path: Path) -> ArtifactMeta:
    """Our ArtifactMeta from ``get_edgequant_meta``; for other LLM programs, from ExecuTorch's llama
    metadata methods."""
    from edgequant.export.executorch import META_METHOD

    raw = _scalar(module, META_METHOD)
    if raw is not None:
        return ArtifactMeta.from_json(raw if isinstance(raw, str) else bytes(raw).decode())
    vocab = _scalar(module, "get_vocab_size")
    ctx = _scalar(module, "get_max_context_len") or _scalar(module, "get_max_seq_len")
    if vocab is None or ctx is None:
        raise InputError(f"{path} has no LLM metadata (get_vocab_size / get_max_context_len): not an exported decoder")
    eos = _scalar(module, "get_eos_ids")
    eos_ids = [int(e) for e in (eos if isinstance(eos, list) else [eos] if eos is not None else []) if int(e) >= 0]
    bos = _scalar(module, "get_bos_id")
    return ArtifactMeta(
        target="xnnpack", vocab_size=int(vocab), max_seq_len=int(ctx), bos_id=None if bos is None or int(bos) < 0 else int(bos),
        eos_ids=eos_ids, n_layers=int(_scalar(module, "get_n_layers") or 0), source=str(path),
        extra={"max_chunk": int(_scalar(module, "get_max_seq_len") or ctx)},
    )


class _StderrCapture:
    """ExecuTorch's runtime logs a line to stderr (fd 2) on every custom-SDPA call ("No temp allocator
    provided"); this sends fd 2 to a scratch file around each call and shows what was written only when
    the call fails."""

    def __init__(self) -> None:
        self.file = tempfile.TemporaryFile()

    @contextlib.contextmanager
    def __call__(self):
        import sys

        sys.stderr.flush()
        saved = os.dup(2)
        self.file.seek(0)
        self.file.truncate()
        os.dup2(self.file.fileno(), 2)
        try:
            yield
        except Exception as e:
            os.dup2(saved, 2)
            self.file.seek(0)
            lines = [l for l in self.file.read().decode(errors="replace").splitlines() if "temp allocator" not in l and "cpuinfo" not in l]
            raise RuntimeError(f"{e}\n" + "\n".join(lines[-20:])) from None
        finally:
            os.dup2(saved, 2)
            os.close(saved)

    def close(self) -> None:
        self.file.close()


class ExecuTorchRuntime(LLMRuntime):
    def __init__(self, path: Path, threads: int | None = None, etdump: bool = False) -> None:
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path} is not a file")
        pl = _portable_lib()
        self.path = path
        self.etdump = etdump
        self._capture = _StderrCapture()
        if threads:
            with self._capture():
                pl._unsafe_reset_threadpool(int(threads))
        try:
            with self._capture():
                self.module = pl._load_for_executorch(str(path), enable_etdump=etdump)
        except RuntimeError as e:
            raise InputError(f"ExecuTorch cannot load {path}: {str(e).splitlines()[0]}") from None
        if "forward" not in self.module.method_names():
            raise InputError(f"{path} has no forward method")
        self.meta = read_meta(self.module, path)
        self.max_chunk = int(self.meta.extra.get("max_chunk") or self.meta.max_seq_len)
        self.threads = pl._threadpool_get_thread_count()

    def reset(self) -> None:
        """Nothing to clear: attention never reads cache slots past the current position, so the next
        sequence (starting at position 0) overwrites the previous one."""

    def forward(self, tokens: torch.Tensor, start_pos: int) -> torch.Tensor:
        tokens = torch.as_tensor(tokens, dtype=torch.long).reshape(-1)
        n = tokens.numel()
        if n == 0:
            return torch.empty(0, self.meta.vocab_size)
        if start_pos < 0 or start_pos + n > self.meta.max_seq_len:
            raise EdgequantError(
                f"positions {start_pos}..{start_pos + n - 1} exceed the artifact's max sequence length {self.meta.max_seq_len}; "
                "export with a larger --max-seq-len"
            )
        if n > self.max_chunk:
            return torch.cat([self.forward(tokens[s : s + self.max_chunk], start_pos + s) for s in range(0, n, self.max_chunk)])
        pos = torch.arange(start_pos, start_pos + n, dtype=torch.long)
        with self._capture():
            out = self.module.forward((tokens.reshape(1, n), pos))
        return out[0].reshape(n, -1).float()

    def per_op_profile(self, tokens: torch.Tensor, gen: int) -> list[dict] | None:
        """Time by operator from ExecuTorch's ETDump (XNNPACK reports each of its operators, the
        portable kernels each call) over a prefill of ``tokens`` and ``gen - 1`` decode steps, in a
        second copy of the program loaded with ETDump on."""
        rt = ExecuTorchRuntime(self.path, threads=None, etdump=True)
        try:
            logits = rt.prefill(tokens)[-1]
            pos = len(tokens)
            for _ in range(max(gen - 1, 0)):
                tok = int(torch.argmax(logits))
                logits = rt.forward(torch.tensor([tok]), pos)[-1]
                pos += 1
            with tempfile.TemporaryDirectory() as d:
                f = Path(d) / "run.etdp"
                rt.module.write_etdump_result_to_file(str(f))
                return etdump_rows(f)
        finally:
            rt.close()

    def close(self) -> None:
        self.module = None
        self._capture.close()


# ETDump event names that are the runtime's own bookkeeping around an operator or a delegate call, not
# an operator (their time is the sum of what they wrap)
_WRAPPERS = {"OPERATOR_CALL", "DELEGATE_CALL", "Method::execute", "Method::init", "Program::load_method"}


def _op_of(name: str) -> str:
    """``native_call_mm.out`` -> ``mm.out``; ``Fully Connected (NC, QDU8, F32, QB4W) GEMM #3`` -> without
    the running number."""
    if name.startswith("native_call_"):
        name = name[len("native_call_") :]
    head, sep, tail = name.rpartition(" #")
    return head if sep and tail.isdigit() else name


def etdump_rows(etdump: Path) -> list[dict]:
    """Rows of {op, calls, ms, share} from an ETDump, largest first; XNNPACK's operators carry an
    ``xnnpack:`` prefix, the rest of the delegate call (its dispatch overhead) is ``xnnpack:(call overhead)``."""
    with contextlib.redirect_stderr(open(os.devnull, "w")):
        import warnings

        from executorch.devtools import Inspector

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            inspector = Inspector(etdump_path=str(etdump))
    calls: collections.Counter = collections.Counter()
    ms: collections.Counter = collections.Counter()
    for block in inspector.event_blocks:
        if block.name != "Execute":
            continue
        events = list(block.events)
        for i, e in enumerate(events):
            if e.perf_data is None:
                continue
            raw = list(e.perf_data.raw)
            if e.name == "DELEGATE_CALL":
                # the delegate's own operators are listed just before its DELEGATE_CALL event, which
                # spans them; keep only the remainder (dispatch and copies in and out)
                inner = 0.0
                k = i - 1
                while k >= 0 and events[k].is_delegated_op:
                    if events[k].perf_data is not None:
                        inner += sum(events[k].perf_data.raw)
                    k -= 1
                op = "xnnpack:(call overhead)"
                total = max(sum(raw) - inner, 0.0)
            elif e.name in _WRAPPERS:
                continue
            else:
                op = ("xnnpack:" if e.is_delegated_op else "") + _op_of(e.name)
                total = sum(raw)
            calls[op] += len(raw)
            ms[op] += total
    grand = sum(ms.values()) or 1.0
    rows = [{"op": op, "calls": calls[op], "ms": round(ms[op], 3), "share": round(ms[op] / grand, 4)} for op in ms]
    return sorted(rows, key=lambda r: -r["ms"])
