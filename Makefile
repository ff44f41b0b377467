# Two commands set everything up on a fresh clone:  `make demo`  and  `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.tledge-installed

PYTHON ?= python3

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "make: tledge[all] (train, export) needs Python 3.11 or later (keras 3.15 and onnxruntime 1.31 have no 3.10 wheels); this $(PYTHON) is " + sys.version.split()[0] + ": make PYTHON=python3.11 ... (the runtime alone, tledge[runtime], runs on 3.10)")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[all,dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m tledge demo

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow --durations=15

bench: $(STAMP)
	$(PY) benchmarks/run.py

wheel: $(STAMP)  # build/ first: setuptools reuses it, and a module deleted since would still be in the wheel
	rm -rf build
	$(PY) -m pip wheel -q --no-deps -w dist .

.PHONY: install demo test test-slow bench wheel
