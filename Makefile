# Two commands set everything up on a fresh clone:  `make demo`  and  `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.tledge-installed

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
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
