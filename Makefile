# attnprobe: `make demo` and `make test` set up .venv on a fresh machine and run.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEVSTAMP := $(VENV)/.installed-dev
NOTEBOOKS := $(wildcard notebooks/*.ipynb)

.PHONY: setup demo test lint gpu-check bench clean

setup: $(DEVSTAMP)

# torch first, pinned (the CPU build on this machine's disk); then the package. The demo needs
# only the package; the tests add the dev extras (pytest, notebooks, linters) on top.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e .
	touch $(STAMP)

$(DEVSTAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(DEVSTAMP)

demo: $(STAMP)
	$(VENV)/bin/attnprobe reproduce --out runs/demo

lint: $(DEVSTAMP)
	$(VENV)/bin/ruff check probe editing tests
	$(VENV)/bin/ruff format --check probe editing
	$(VENV)/bin/mypy probe editing

test: $(DEVSTAMP) lint
	$(VENV)/bin/pytest -q tests $(if $(NOTEBOOKS),--nbmake --nbmake-timeout=900 $(NOTEBOOKS))

bench: $(STAMP)
	$(PY) benchmarks/run_all.py --out benchmarks/results

# on CUDA: full-size SD 1.5, SDXL and a Flux-shaped transformer; elsewhere the tiny smoke run
gpu-check: $(STAMP)
	$(PY) benchmarks/gpu_check.py --out benchmarks/results

clean:
	rm -rf $(VENV) runs
