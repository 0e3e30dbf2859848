# The README's two commands, with everything they need set up on a fresh machine.
#   make demo    venv + package (torch, torchvision, ...) + the PennFudanPed demo
#   make test    + test extras, helm and kubectl, the Kubernetes binaries, Kueue and (as root) the real node of
#                tests/cluster and the project's images it runs (scripts/build-images.sh: seconds when only
#                assay's code changed, 10-20 minutes cold), headless Chromium (for the report tests) + the whole suite
# CPU-only torch (about 4.5 GB less than PyPI's CUDA build), for users with internet:
#   make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_INDEX ?=
DEMO_ARGS ?=
PYTEST_ARGS ?=

.PHONY: demo test lint install install-test

demo: install
	$(PY) examples/pennfudan/demo.py $(DEMO_ARGS)

test: install-test lint
	bash scripts/install-helm.sh
	bash scripts/install-chromium.sh
	if [ -f scripts/install-kube.sh ]; then bash scripts/install-kube.sh; fi
	if [ -f scripts/install-kueue.sh ]; then bash scripts/install-kueue.sh; fi
	bash scripts/install-gofakes3.sh
	if [ -f scripts/install-node.sh ] && [ "$$(id -u)" = 0 ]; then bash scripts/install-node.sh; fi
	if [ -f scripts/build-images.sh ] && [ "$$(id -u)" = 0 ]; then bash scripts/build-images.sh; fi
	$(PY) -m pytest $(PYTEST_ARGS)

# ruff (rules in pyproject.toml) and import-linter (the layers, and what the operator may import)
lint: install-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

install: $(VENV)/.assay-installed
install-test: $(VENV)/.assay-test-installed

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# Stamps: a second `make demo` installs nothing unless pyproject.toml changed.
$(VENV)/.assay-installed: pyproject.toml | $(PY)
	$(if $(TORCH_INDEX),$(PY) -m pip install -q torch torchvision --index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -e .
	$(PY) -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
	touch $@

$(VENV)/.assay-test-installed: pyproject.toml $(VENV)/.assay-installed
	$(PY) -m pip install -q -e ".[test,operator]"
	touch $@
