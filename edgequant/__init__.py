"""edgequant: quantize an LLM checkpoint once, lower it to phone runtimes, and prove every artifact.

The public API is small and imports its heavy parts lazily:

- :func:`quantize` — a float checkpoint to a quantized checkpoint directory (RTN, GPTQ);
- :func:`evaluate` — perplexity, and KL / top-1 against a reference model.
"""
from __future__ import annotations

__version__ = "0.1.0"

import logging as _logging

# torchao (imported by transformers when it is installed) logs import-time noise that says nothing
# about the user's job: deprecation notes from torch's pytree and missing CUDA-only kernels.
for _name in ("torch.utils._pytree", "torchao"):
    _logging.getLogger(_name).setLevel(_logging.ERROR)

from edgequant.errors import EdgequantError

__all__ = ["EdgequantError", "evaluate", "quantize", "__version__"]


def quantize(*args, **kwargs):
    from edgequant.compress.quantize import quantize as _quantize

    return _quantize(*args, **kwargs)


def evaluate(*args, **kwargs):
    from edgequant.eval.evaluate import evaluate as _evaluate

    return _evaluate(*args, **kwargs)
