# vggtool: `make help` lists the targets. Variables pass through, e.g. `make all PROFILE=quick`.
.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON       ?= python3
VENV         ?= .venv
REQUIREMENTS ?= requirements/report.txt
VGGTOOL      ?= $(VENV)/bin/vggtool
PROFILE      ?= full
RUN          ?= runs/$(PROFILE)
DATA_ARGS    ?=
TRAIN_ARGS   ?=
NPROC        ?= 1
CPUS         ?= 0-1
THREADS      ?= 2
BENCH_ARGS   ?=
MAX_DROP     ?= 1.0
SEARCH_ARGS  ?=
REAL_MODEL   ?= ../shared/models/vgg19_bn-cifar100/vgg19_bn-cifar100-20ep-bf16cpu.fp16.safetensors
REAL_RUN     ?= runs/vgg19-real
REAL_RESULTS ?= results/vgg19-shared-model
CPU_RUN      ?= runs/cpu
IMAGE        ?= vggtool
CPU_IMAGE    ?= vggtool:cpu
DOCKER_RUN   ?= docker run --rm -v "$(CURDIR)":/workspace

.PHONY: help install data train evaluate compress bench report all real-study cpu-study search test lint \
        docker-build docker-cpu-build docker-all docker-bench

help: ## Show this list of targets
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-17s %s\n", $$1, $$2}'

INSTALLED    := $(VENV)/.vggtool-installed

install: ## Create $(VENV) with the report's pinned stack and vggtool (REQUIREMENTS=... for another)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -r $(REQUIREMENTS) -r requirements/dev.txt -c $(REQUIREMENTS)
	$(VENV)/bin/pip install --no-deps -e .
	touch $(INSTALLED)

# test and lint on a fresh clone install first instead of failing with "Error 127"
$(INSTALLED):
	$(MAKE) install

data: $(INSTALLED) ## Get CIFAR-100 into ./data (DATA_ARGS="--synthetic" for the offline stand-in)
	$(VGGTOOL) data $(DATA_ARGS)

train: $(RUN)/best.safetensors ## Train the baseline for PROFILE (full = the report's recipe, quick = minutes on CPU); NPROC=N: N processes (torchrun + DDP)

TRAINER := $(if $(filter-out 1,$(NPROC)),$(VENV)/bin/torchrun --nproc_per_node $(NPROC) -m vggtool,$(VGGTOOL))

$(RUN)/best.safetensors: | $(INSTALLED)
	$(TRAINER) train --profile $(PROFILE) --run-dir $(RUN) $(TRAIN_ARGS)

evaluate: $(INSTALLED) ## Top-1/top-5 test error of the run's baseline
	$(VGGTOOL) evaluate --run-dir $(RUN)

compress: $(INSTALLED) ## Build every variant of the report from the run's baseline
	$(VGGTOOL) compress --run-dir $(RUN) --force

bench: $(INSTALLED) ## Measure every variant, pinned to CPUS with THREADS threads
	$(VGGTOOL) bench --run-dir $(RUN) --cpus $(CPUS) --threads $(THREADS) $(BENCH_ARGS)

report: $(INSTALLED) ## Re-render REPORT.md, tables and plots from the run's results; copy them into results/
	$(VGGTOOL) report --run-dir $(RUN) --copy-to results

all: ## The whole study: data, train, compress, bench, report
	$(MAKE) data
	$(MAKE) train
	$(MAKE) compress
	$(MAKE) bench
	$(MAKE) report

real-study: $(INSTALLED) ## The study on a trained VGG19-BN (REAL_MODEL, the shared one): the report's eight and --set full-size, one bench, REAL_RESULTS
	test -f $(REAL_RUN)/best.safetensors || $(VGGTOOL) import $(REAL_MODEL) --run-dir $(REAL_RUN)
	$(VGGTOOL) compress --run-dir $(REAL_RUN) --set report --set full-size
	$(VGGTOOL) bench --run-dir $(REAL_RUN) --cpus $(CPUS) --threads $(THREADS) --quick --accuracy-images 0 \
		--runtime onnxruntime --runtime openvino $(BENCH_ARGS)
	$(VGGTOOL) report --run-dir $(REAL_RUN) --copy-to $(REAL_RESULTS)

cpu-study: $(INSTALLED) ## The study on our own VGG19-BN: train --profile cpu into CPU_RUN (bf16 where the CPU has it), then real-study on it into results/vgg19-cifar100
	$(MAKE) train PROFILE=cpu RUN=$(CPU_RUN)
	$(MAKE) real-study REAL_RUN=$(CPU_RUN) REAL_RESULTS=results/vgg19-cifar100
	mkdir -p results/vgg19-cifar100/train && cp $(CPU_RUN)/config.json $(CPU_RUN)/metrics.jsonl results/vgg19-cifar100/train/
	$(VGGTOOL) evaluate --run-dir $(CPU_RUN) --split val --json > $(CPU_RUN)/evaluate-val.json.tmp \
		&& mv $(CPU_RUN)/evaluate-val.json.tmp results/vgg19-cifar100/train/evaluate-val.json

search: $(INSTALLED) ## The fastest chain within MAX_DROP points of $(RUN)'s baseline (SEARCH_ARGS=--quick: 20 min), then one bench of it beside --set beyond
	$(VGGTOOL) search --run-dir $(RUN) --max-drop $(MAX_DROP) --threads $(THREADS) $(SEARCH_ARGS)
	$(VGGTOOL) compress --run-dir $(RUN) --set beyond
	$(VGGTOOL) bench --run-dir $(RUN) --cpus $(CPUS) --threads $(THREADS) --quick --accuracy-images 0 --variant baseline \
		--variant search --set beyond --runtime onnxruntime --runtime openvino --results-dir $(RUN)/search/bench $(BENCH_ARGS)

test: $(INSTALLED) ## Run the test suite (tiny models, generated data, CPU only; installs $(VENV) first if missing)
	$(VENV)/bin/python -m pytest -q

lint: $(INSTALLED) ## Lint the code with ruff and the Dockerfile with hadolint
	$(VENV)/bin/ruff check vggtool tests
	$(VENV)/bin/hadolint docker/Dockerfile

docker-build: ## Build the CUDA 11.8 / cuDNN 8.9 image `vggtool`
	docker build -f docker/Dockerfile --build-arg VARIANT=gpu -t $(IMAGE) .

docker-cpu-build: ## Build the CPU-only image `vggtool:cpu` (same pins) for benchmark hosts
	docker build -f docker/Dockerfile --build-arg VARIANT=cpu -t $(CPU_IMAGE) .

docker-all: ## In the container: GPU training, then CPU-pinned benchmarking, then the report
	$(DOCKER_RUN) $(IMAGE) data $(DATA_ARGS)
	$(DOCKER_RUN) --gpus all $(IMAGE) train --profile $(PROFILE) --run-dir $(RUN) $(TRAIN_ARGS)
	$(DOCKER_RUN) $(IMAGE) compress --run-dir $(RUN) --force
	$(DOCKER_RUN) --cpuset-cpus $(CPUS) $(IMAGE) bench --run-dir $(RUN) --cpus $(CPUS) --threads $(THREADS) $(BENCH_ARGS)
	$(DOCKER_RUN) $(IMAGE) report --run-dir $(RUN) --copy-to results

docker-bench: ## On a CPU host: benchmark and report in the CPU image, pinned to CPUS
	$(DOCKER_RUN) --cpuset-cpus $(CPUS) $(CPU_IMAGE) bench --run-dir $(RUN) --cpus $(CPUS) --threads $(THREADS) $(BENCH_ARGS)
	$(DOCKER_RUN) $(CPU_IMAGE) report --run-dir $(RUN) --copy-to results
