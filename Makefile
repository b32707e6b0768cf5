# bertrt: `make run` sets up and runs the main job on the bundled all-MiniLM-L6-v2;
# `make test` sets up and runs the whole test suite (what .ci/run calls).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Pinned: the CPU build of this torch installs from local disk; an unpinned torch pulls a CUDA build.
TORCH := torch==2.13.0
EXTRAS ?= test
NATIVE_SOURCES := $(shell find csrc -type f 2>/dev/null) CMakeLists.txt setup.py pyproject.toml

.PHONY: setup run test lint format bench clean

$(VENV)/.installed-$(EXTRAS): $(NATIVE_SOURCES)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q setuptools wheel "pybind11>=2.12" "cmake>=3.24"
	$(BIN)/python -m pip install -q --no-build-isolation -e ".[$(EXTRAS)]" "$(TORCH)"
	touch $@

setup: $(VENV)/.installed-$(EXTRAS)

run: setup
	$(BIN)/bertrt info
	mkdir -p out
	$(BIN)/bertrt embed --file examples/sentences.txt > out/embeddings.jsonl
	$(BIN)/python examples/similarity.py < out/embeddings.jsonl
	@echo "embeddings written to out/embeddings.jsonl"

test: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

lint: setup
	$(BIN)/ruff check engine kernels tests benchmarks

bench:
	$(MAKE) setup EXTRAS=test,bench
	$(BIN)/bertrt bench --out bench-results

clean:
	rm -rf build out bench-results engine/_C*.so engine/_cuda*.so engine/*.ptxas.log *.egg-info
