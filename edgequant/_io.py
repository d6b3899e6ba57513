"""Writing outputs all at once: into a temporary path beside the destination, renamed into place only
when everything is written, so a failure never leaves a half-written or overwritten result."""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from edgequant.errors import InputError, OutputExistsError


def check_output(out: Path, force: bool) -> Path:
    out = Path(out)
    if out.exists() and not force:
        raise OutputExistsError(f"{out} already exists; choose another output or pass --force to replace it")
    parent = out.parent if str(out.parent) else Path(".")
    if parent.exists() and not parent.is_dir():
        raise InputError(f"{parent} is not a directory")
    return out


@contextlib.contextmanager
def atomic_output(out: Path, force: bool = False, directory: bool = True):
    """Yield a temporary directory (``directory=True``) or file path to write; on success it replaces
    ``out``. On any exception nothing at ``out`` changes and the temporary data is removed."""
    out = check_output(out, force)
    parent = out.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=parent))
    try:
        target = tmp / "out" if directory else tmp / out.name
        if directory:
            target.mkdir()
        yield target
        if out.exists():
            old = tmp / "replaced"
            os.replace(out, old)
        os.replace(target, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def sha256_of(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def dir_size_mb(path: Path) -> float:
    path = Path(path)
    if path.is_file():
        return path.stat().st_size / 1e6
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6
