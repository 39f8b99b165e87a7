# The two commands of the README's quick start. Each does all set-up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

## Train briefly on the embedded synthetic videos, propagate, evaluate, write a report (CPU, minutes).
demo: $(STAMP)
	$(VENV)/bin/timecycle demo --out demo-out

## The whole test suite. Real-data tests read $$TIMECYCLE_DATA (default ../shared/data).
test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) bench/propagate.py

clean:
	rm -rf $(VENV) demo-out .pytest_cache
