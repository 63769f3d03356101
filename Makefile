# The few commands people run. `make demo` and `make test` each install what they need first.
PY ?= .venv/bin/python
PIP = $(PY) -m pip

.PHONY: install demo test lint bench
.venv/bin/python:
	python3 -m venv .venv

install: .venv/bin/python
	$(PIP) install -q torch==2.13.0
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
