# gantrain: `make help` lists the targets.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: help install train test bench

help: ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

install: ## create .venv and install gantrain (editable) with its test tools and sweep plugins
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,sweep]'

train: ## train the reference GAN on the bundled MNIST sample (offline)
	$(VENV)/bin/gantrain train

test: ## run the test suite (a few minutes on 2 CPU cores)
	$(PY) -m pytest -q -n 2 --dist loadgroup

bench: ## CPU benchmark: gantrain's training step against the reference pipeline
	$(PY) benchmarks/bench_train.py
