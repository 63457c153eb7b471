# Two commands on a fresh machine: `make demo` and `make test`.
# TORCH is what pip installs first. Here (CPU machines) it is the local CPU wheel; on a GPU machine pass the
# build you want, e.g.  make demo TORCH="torch --index-url https://download.pytorch.org/whl/cu128"
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.loraforge-installed

.PHONY: install demo test docs clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/loraforge demo

test: $(STAMP)
	$(PY) -m pytest -q

docs: $(STAMP)
	$(VENV)/bin/loraforge config-docs --write docs/config.md

clean:
	rm -rf $(VENV) output
