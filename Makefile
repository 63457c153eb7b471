# Two commands on a fresh machine: `make demo` and `make test`. Both install first, with the exact versions the test
# suite passed with (LOCK, a constraints file), so a library released tomorrow cannot break today's first run.
#
# TORCH is what pip installs first. Here (CPU machines) it is the local CPU wheel; on a GPU machine pass the
# build you want, e.g.  make demo TORCH="torch --index-url https://download.pytorch.org/whl/cu128"
# INSTALLER=uv (default) installs everything but torch with uv, a pinned release from PyPI (about 5x faster than
# pip here); INSTALLER=pip uses pip alone. LOCK= (empty) installs the newest versions pyproject.toml allows instead.
PYTHON ?= python3
TORCH ?= torch==2.13.0
INSTALLER ?= uv
UV_VERSION := 0.13.9
LOCK ?= src/loraforge/assets/lock.txt
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.loraforge-installed
LATEST := .venv-latest
CONSTRAINTS := $(if $(LOCK),-c $(LOCK))
# The suite runs in JOBS pytest-xdist workers (one thread each); a test file stays on one worker (--dist loadfile),
# so its module fixtures are built once and the two torchrun tests never share a port. Files go out in collection
# order (--no-loadscope-reorder: xdist would sort them by test count, which sent the longest file, four tests, last);
# tests/conftest.py collects the longest files first. JOBS=0 runs in-process.
JOBS ?= 2
PYTEST := -m pytest -q $(if $(filter 0,$(JOBS)),,-n $(JOBS) --dist loadfile --no-loadscope-reorder)

.PHONY: install demo test browser test-latest lock docs clean

$(STAMP): pyproject.toml $(LOCK)
	@lock_py=$$(sed -n 's/^# python //p' $(LOCK) 2>/dev/null); py=$$($(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])'); \
	if [ -n "$$lock_py" ] && [ "$$py" != "$$lock_py" ]; then \
	  echo "note: the lock was tested on Python $$lock_py and $(PYTHON) is $$py; if the install fails, use PYTHON=python$$lock_py, or LOCK= for the newest allowed versions"; fi
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH)
ifeq ($(INSTALLER),uv)
	$(PY) -m pip install -q uv==$(UV_VERSION)
	$(VENV)/bin/uv pip install -q --python $(PY) $(CONSTRAINTS) -e '.[test]'
else
	$(PY) -m pip install -q $(CONSTRAINTS) -e '.[test]'
endif
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/loraforge demo

test: $(STAMP) browser
	$(PY) $(PYTEST)

# The web UI's browser test drives Debian's Chromium through Playwright (Playwright's own browser download needs the
# internet): installed here when it is missing and apt-get can (as root); otherwise that one test is skipped and
# says why. LORAFORGE_CHROMIUM=/path/to/chromium picks another build.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || [ -n "$$LORAFORGE_CHROMIUM" ] || \
	{ if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; } \
	      || echo "note: apt-get install chromium failed: the browser test (tests/ui/test_browser.py) will be skipped"; \
	  else echo "note: no Chromium (as root: apt-get install chromium): the browser test (tests/ui/test_browser.py) will be skipped"; fi; }

# The newest versions pyproject.toml allows, in a venv of their own, then the whole suite: drift seen by us first.
test-latest:
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install -q $(TORCH)
	$(LATEST)/bin/python -m pip install -q --upgrade -e '.[test]'
	$(LATEST)/bin/python -m pip list
	$(LATEST)/bin/python $(PYTEST)

# Refresh the lock: the newest allowed versions, kept only if the whole suite passes with them.
lock: test-latest
	{ sed -n '1,2p' $(LOCK); $(LATEST)/bin/python -c 'import sys; print("# python %d.%d" % sys.version_info[:2])'; \
	  $(LATEST)/bin/python -m pip freeze --exclude-editable | grep -v -i -E '^(torch|loraforge)==|^-e '; } > $(LOCK).new
	mv $(LOCK).new $(LOCK)
	@echo "wrote $(LOCK); review 'git diff $(LOCK)' and commit it"

docs: $(STAMP)
	$(VENV)/bin/loraforge config-docs --write docs/config.md
	$(PY) -c 'from loraforge.config.import_docs import write_import_docs; write_import_docs("docs/import.md")'

clean:
	rm -rf $(VENV) $(LATEST) output
