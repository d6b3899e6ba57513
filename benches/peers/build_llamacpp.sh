#!/usr/bin/env bash
# Build llama.cpp's command-line tools (llama-bench, llama-quantize, llama-perplexity, llama-simple)
# from the llama.cpp source that the llama-cpp-python sdist vendors (PyPI is the only registry here).
#
#   benches/peers/build_llamacpp.sh [DEST]        DEST defaults to <repo>/.peers
#
# Result: DEST/llama.cpp/bin/llama-* and DEST/llama.cpp/VERSION. Nothing is copied into the repo.
# Env: LLAMA_CPP_PYTHON_VERSION (default 0.3.36, which vendors llama.cpp 0c1e570), JOBS (default 2),
#      PYTHON (a python with pip; default /work/main/.venv/bin/python, else python3).
#
# GGML_NATIVE is OFF on purpose: a -march=native build crashes on this VM (the CPU advertises
# features the hypervisor does not enable). The SIMD extensions are named explicitly from /proc/cpuinfo.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DEST="$(realpath -m "${1:-$REPO/.peers}")"
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
JOBS="${JOBS:-2}"
PYTHON="${PYTHON:-/work/main/.venv/bin/python}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3

SRC_ROOT="$DEST/src/llama_cpp_python-$VERSION"
LLAMA_SRC="$SRC_ROOT/vendor/llama.cpp"
BUILD="$DEST/build/llama.cpp-$VERSION"
OUT="$DEST/llama.cpp"
mkdir -p "$DEST/src" "$DEST/build" "$OUT/bin"

if [ ! -f "$LLAMA_SRC/CMakeLists.txt" ]; then
  TMP="$(mktemp -d)"
  trap 'rm -rf "$TMP"' EXIT
  echo "== downloading llama-cpp-python==$VERSION sdist"
  "$PYTHON" -m pip download --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$TMP" >/dev/null
  tar xzf "$TMP"/llama_cpp_python-"$VERSION".tar.gz -C "$DEST/src"
fi

# SIMD flags: the base set always, AVX512 family only where /proc/cpuinfo lists it.
FLAGS="$(grep -m1 '^flags' /proc/cpuinfo || true)"
has() { grep -qw "$1" <<<"$FLAGS"; }
SIMD=(-DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON)
has bmi2        && SIMD+=(-DGGML_BMI2=ON)
has avx_vnni    && SIMD+=(-DGGML_AVX_VNNI=ON)
if has avx512f; then
  SIMD+=(-DGGML_AVX512=ON)
  has avx512vbmi  && SIMD+=(-DGGML_AVX512_VBMI=ON)
  has avx512_vnni && SIMD+=(-DGGML_AVX512_VNNI=ON)
  has avx512_bf16 && SIMD+=(-DGGML_AVX512_BF16=ON)
fi
echo "== SIMD: ${SIMD[*]}"

cmake -S "$LLAMA_SRC" -B "$BUILD" -G "Unix Makefiles" \
  -DCMAKE_BUILD_TYPE=Release \
  -DBUILD_SHARED_LIBS=OFF \
  -DGGML_NATIVE=OFF "${SIMD[@]}" \
  -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF \
  -DLLAMA_BUILD_EXAMPLES=ON -DLLAMA_BUILD_TOOLS=ON >"$BUILD.configure.log" 2>&1 \
  || { tail -40 "$BUILD.configure.log"; exit 1; }

TARGETS=(llama-bench llama-quantize llama-perplexity llama-simple)
cmake --build "$BUILD" -j "$JOBS" --target "${TARGETS[@]}" >"$BUILD.build.log" 2>&1 \
  || { tail -60 "$BUILD.build.log"; exit 1; }

for t in "${TARGETS[@]}"; do cp -f "$BUILD/bin/$t" "$OUT/bin/$t"; done
COMMIT="$(git -C "$LLAMA_SRC" rev-parse HEAD 2>/dev/null || echo unknown)"
{
  echo "llama-cpp-python sdist: $VERSION"
  echo "llama.cpp commit: $COMMIT"
  echo "simd: ${SIMD[*]}"
  "$OUT/bin/llama-bench" --version 2>&1 | head -3 || true
} >"$OUT/VERSION"
cat "$OUT/VERSION"
echo "== built: $(ls "$OUT/bin" | tr '\n' ' ')"
