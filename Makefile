# twofold: `make demo` sets up and runs the main job; `make test` sets up and runs the tests.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# torch is optional; this pin matches the CPU build that these machines keep on disk.
TORCH  ?= torch==2.13.0
OPACUS ?= opacus>=1.6

.PHONY: demo test lint bench report java venv install install-dev install-torch clean

demo: java install
	$(VENV)/bin/twofold demo

# Tests that start services run twice more first: races show only sometimes.
test: java install-dev
	$(VENV)/bin/ruff check src tests benchmarks
	$(PY) -m pytest -q -p no:cacheprovider -m service
	$(PY) -m pytest -q -p no:cacheprovider -m service
	$(PY) -m pytest -q

lint: install-dev
	$(VENV)/bin/ruff check src tests benchmarks

bench: java install-dev
	$(VENV)/bin/twofold bench all --json benchmarks/results/latest.json

java:
	@command -v java >/dev/null 2>&1 || { \
	  echo "twofold needs Java 17 or newer for PySpark, and none was found."; \
	  echo "Install it, e.g.: sudo apt-get install openjdk-17-jre-headless  (Debian/Ubuntu)"; \
	  echo "                  brew install openjdk@17                       (macOS)"; \
	  exit 1; }
	@v=$$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n1); \
	if [ -z "$$v" ] || [ "$$v" -lt 17 ]; then \
	  echo "twofold needs Java 17 or newer for PySpark; found Java $$v."; \
	  echo "Install it, e.g.: sudo apt-get install openjdk-17-jre-headless, then set JAVA_HOME."; \
	  exit 1; fi

$(PY):
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "twofold needs Python 3.11+"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

venv: $(PY)

$(VENV)/.installed: $(PY) pyproject.toml
	$(PIP) install -q -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) install -q -e '.[dev,tee]'
	-$(PIP) install -q '$(TORCH)' '$(OPACUS)' || echo "note: torch not installed; the PyTorch path and its tests will be skipped"
	touch $@

install: $(VENV)/.installed
	-@$(PY) -c 'import torch' 2>/dev/null || $(PIP) install -q '$(TORCH)' || echo "note: torch not installed; the PyTorch step of the demo will be skipped"

install-dev: $(VENV)/.installed-dev

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
