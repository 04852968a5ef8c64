# The README's two commands are `make run` and `make test`; everything else is for developers.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test lint unit fuzz bench system-deps clean install uninstall docs screenshot

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,fuzz]'
	touch $(STAMP)

# Run the appliance on a demo device (no root needed); Ctrl-C stops it.
run: $(STAMP)
	$(PY) -m tether demo --dir demo

# Install everything the tests need (Debian packages when root) and run the whole suite.
test: system-deps $(STAMP)
	$(VENV)/bin/ruff check tether tests fuzz bench
	$(VENV)/bin/pytest -q

system-deps:
	scripts/install-system-deps

lint: $(STAMP)
	$(VENV)/bin/ruff check tether tests fuzz bench
	$(VENV)/bin/ruff format --check tether tests fuzz bench

unit: $(STAMP)
	$(VENV)/bin/pytest -q -m "not e2e"

# make fuzz TARGET=config SECONDS=300   (targets: fuzz/fuzz_*.py)
TARGET  ?= config
SECONDS ?= 60
fuzz: $(STAMP)
	scripts/fuzz $(TARGET) $(SECONDS)

bench: $(STAMP)
	for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

# The service install (see README, "Installing as a service"); as root. Paths can be moved for a
# staging root or a test: make install DESTDIR=... PREFIX=... BINDIR=... UNITDIR=... CONFDIR=...
INSTALL_VARS = PYTHON PREFIX BINDIR UNITDIR CONFDIR MANDIR COMPLETIONDIR DESTDIR
install:
	$(foreach v,$(INSTALL_VARS),$(if $($(v)),$(v)='$($(v))')) scripts/install

uninstall:
	$(foreach v,$(INSTALL_VARS),$(if $($(v)),$(v)='$($(v))')) scripts/uninstall

# Regenerate man/tetherctl.8 and completions/tetherctl.bash from the parser after a CLI change.
docs: $(STAMP)
	$(PY) scripts/gen-docs

# Retake docs/join-page.png, the README's picture of the join page (headless Chromium; the same
# bytes on every run on one machine, so only a real change of the page changes the file).
screenshot: $(STAMP)
	$(PY) scripts/screenshot-join docs/join-page.png

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .hypothesis
