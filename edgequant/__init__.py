"""edgequant: quantize an LLM checkpoint once, lower it to phone runtimes, and prove every artifact.

The public API is small and imports its heavy parts lazily:

- :func:`quantize` — a float checkpoint to a quantized checkpoint directory (RTN, GPTQ);
- :func:`evaluate` — perplexity, and KL / top-1 against a reference model.
"""
from __future__ import annotations

__version__ = "0.1.0"

import logging as _logging
import os as _os

# Determinism: MKL may change how many threads a matrix product uses with the machine's load, and with
# it the order of floating-point sums, so the same job could round a few codes differently. Fixing
# the thread count makes the same inputs and seed give byte-identical checkpoints. (It takes effect when
# edgequant is imported before torch, as the CLI does.)
_os.environ.setdefault("MKL_DYNAMIC", "FALSE")
_os.environ.setdefault("OMP_DYNAMIC", "FALSE")

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
