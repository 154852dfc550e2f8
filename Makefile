# attnprobe: `make demo` and `make test` set up .venv on a fresh machine and run.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEVSTAMP := $(VENV)/.installed-dev
NOTEBOOKS := $(wildcard notebooks/*.ipynb)

.PHONY: setup demo test lint gpu-check browser bench clean

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

# the browser tests' Chromium (tests/test_explorer_browser.py): Debian's chromium and
# chromium-driver, installed when missing and running as root; else they skip (never in CI)
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } || \
	echo "no Chromium here: the browser tests will skip (apt-get install chromium chromium-driver)"

test: $(DEVSTAMP) lint browser
	$(VENV)/bin/pytest -q tests $(if $(NOTEBOOKS),--nbmake --nbmake-timeout=900 $(NOTEBOOKS))

bench: $(STAMP)
	$(PY) benchmarks/run_all.py --out benchmarks/results

# on CUDA: full-size SD 1.5, SDXL and a Flux-shaped transformer; elsewhere the tiny smoke run
gpu-check: $(STAMP)
	$(PY) benchmarks/gpu_check.py --out benchmarks/results

clean:
	rm -rf $(VENV) runs
