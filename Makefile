# gantrain: `make help` lists the targets. Every target installs first (once, and again when pyproject.toml changes).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: help install train test bench

help: ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,sweep]'
	touch $@

install: $(STAMP) ## create .venv and install gantrain (editable) with its test tools and sweep plugins

train: install ## train the reference GAN on the bundled MNIST sample (offline)
	$(VENV)/bin/gantrain train

test: install ## run the test suite (2-3 minutes on 2 CPU cores), then the 15 slowest tests
	$(PY) -m pytest -q -n 2 --dist loadgroup --durations=15

bench: install ## CPU benchmark: gantrain's training step against the reference pipeline
	$(PY) benchmarks/bench_train.py
