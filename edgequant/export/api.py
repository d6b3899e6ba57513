"""``export()``: a quantized checkpoint to a target's artifact, written atomically with its tokenizer."""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from edgequant._io import check_output, dir_size_mb
from edgequant.errors import EdgequantError, InputError
from edgequant.targets.registry import get_target, load_object
from edgequant.targets.runtime import tokenizer_dir_for


@dataclass
class ExportResult:
    out: str
    target: str
    scheme: str
    seconds: float
    size_mb: float
    max_seq_len: int
    details: dict

    def to_dict(self) -> dict:
        return asdict(self)


def export(
    qdir: str | Path,
    target: str,
    out: str | Path,
    *,
    scheme: str | None = None,
    max_seq_len: int = 1024,
    force: bool = False,
    **options,
) -> ExportResult:
    """Lower the quantized checkpoint ``qdir`` to ``target`` at ``out``.

    The exporter writes into a temporary directory beside ``out``; the artifact and its tokenizer are
    renamed into place only when both are complete.
    """
    from edgequant.compress.checkpoint import is_quantized_dir
    from edgequant.models.loading import load_model, resolve_model_path

    t0 = time.time()
    tgt = get_target(target)
    if not tgt.exporter:
        raise EdgequantError(f"target '{target}' has no exporter: its artifact is the quantized checkpoint itself")
    scheme = scheme or tgt.default_scheme
    if scheme not in tgt.schemes:
        raise EdgequantError(f"target '{target}' has no scheme '{scheme}'; choose one of {', '.join(tgt.schemes)}")
    out = Path(out)
    if tgt.suffix and out.suffix != tgt.suffix:
        raise EdgequantError(f"a {tgt.name} artifact is a '{tgt.suffix}' file: name --out like model{tgt.suffix}")
    if max_seq_len < 2:
        raise EdgequantError("--max-seq-len must be at least 2")
    check_output(out, force)
    path = resolve_model_path(qdir)
    if not is_quantized_dir(path):
        raise InputError(f"{path} is not a quantized checkpoint: run `edgequant quantize` first")
    exporter = load_object(tgt.exporter, tgt.extra)
    loaded = load_model(path)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        art = tmp / out.name
        details = exporter(loaded, art, scheme=scheme, max_seq_len=max_seq_len, **options) or {}
        if not art.exists():
            raise EdgequantError(f"the {tgt.name} exporter wrote nothing")
        # a directory artifact holds its tokenizer; a file artifact gets a sidecar directory
        if art.is_dir() and tgt.suffix == "":
            loaded.tokenizer.save_pretrained(art)
            tok_tmp = None
        else:
            tok_tmp = tmp / tokenizer_dir_for(out).name
            loaded.tokenizer.save_pretrained(tok_tmp)
        size = dir_size_mb(art)
        for final, staged in ((tokenizer_dir_for(out), tok_tmp), (out, art)):
            if staged is None:
                continue
            if final.exists():
                os.replace(final, tmp / f"replaced-{final.name}")
            os.replace(staged, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ExportResult(
        out=str(out), target=tgt.name, scheme=scheme, seconds=round(time.time() - t0, 2), size_mb=round(size, 3), max_seq_len=max_seq_len, details=details
    )
