# The few commands people run. `make demo` and `make test` each install what they need first.
PY ?= .venv/bin/python
PIP = $(PY) -m pip
# Where torch comes from. PyPI's Linux torch wheel bundles CUDA (multi-GB); on a CPU-only machine pass
# PyTorch's CPU index: make install TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=

.PHONY: install demo test lint bench
.venv/bin/python:
	python3 -m venv .venv

install: .venv/bin/python
	$(PIP) install -q torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PIP) install -q -e ".[dev]"

demo: install
	$(PY) scripts/demo.py

test: install
	$(PY) -m pytest -q -n 2 --dist loadgroup

lint:
	$(PY) -m ruff check src tests scripts benchmarks

.PHONY: notebooks
notebooks: install   # run every notebooks/*.ipynb top to bottom; executed copies in runs/notebooks/
	$(PY) scripts/run_notebooks.py
