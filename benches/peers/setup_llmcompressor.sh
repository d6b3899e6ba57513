#!/usr/bin/env bash
# A separate virtual environment with llm-compressor, for benches/bench_gptq.py.
#
#   benches/peers/setup_llmcompressor.sh [DEST]      DEST defaults to <repo>/.peers  (venv: DEST/llmc-venv)
#
# Pins (llmcompressor 0.14.0.1 asks for torch<=2.14, transformers 5.15..5.17, compressed-tensors 0.19.0):
#   torch 2.13.0 is installed FIRST and alone, so that nothing later pulls another (CUDA) build;
#   every later install runs with a constraint file that holds torch at the version installed.
# Env: PYTHON (interpreter for the venv; default python3.11), LLMC_VERSION, TRANSFORMERS_VERSION.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DEST="$(realpath -m "${1:-$REPO/.peers}")"
VENV="$DEST/llmc-venv"
PY="${PYTHON:-python3.11}"
LLMC_VERSION="${LLMC_VERSION:-0.14.0.1}"
TRANSFORMERS_VERSION="${TRANSFORMERS_VERSION:-5.17.0}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"

mkdir -p "$DEST"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)

echo "== torch $TORCH_VERSION"
"${PIP[@]}" "torch==$TORCH_VERSION"
"$VENV/bin/python" - <<'PY'
import torch
assert torch.version.cuda is None, f"a CUDA build of torch was installed ({torch.__version__}); install the CPU wheel"
print("torch", torch.__version__)
PY
CONS="$VENV/torch-constraint.txt"
echo "torch==$("$VENV/bin/python" -c 'import torch; print(torch.__version__)')" >"$CONS"

echo "== llmcompressor $LLMC_VERSION, transformers $TRANSFORMERS_VERSION"
"${PIP[@]}" -c "$CONS" "llmcompressor==$LLMC_VERSION" "transformers==$TRANSFORMERS_VERSION" safetensors psutil

"$VENV/bin/python" - <<'PY'
import importlib.metadata as md
import torch
assert torch.version.cuda is None
for p in ("llmcompressor", "compressed-tensors", "transformers", "torch", "accelerate"):
    print(f"{p} {md.version(p)}")
import llmcompressor  # noqa: F401  (import check)
from llmcompressor.modifiers.quantization import GPTQModifier  # noqa: F401
PY
"$VENV/bin/python" -m pip freeze >"$VENV/freeze.txt"
echo "== ready: $VENV (pip freeze in $VENV/freeze.txt)"
