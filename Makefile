# `make test` and `make demo` bootstrap .venv from nothing; the second run only
# reinstalls when a pyproject.toml or constraints.txt changed.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.bertcore-installed
HEADS  := $(sort $(dir $(wildcard heads/*/pyproject.toml)))
PIP    := $(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt

.PHONY: test demo bench install clean

install: $(STAMP)

$(STAMP): pyproject.toml $(wildcard heads/*/pyproject.toml) constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade "pip>=24"
	$(PIP) torch
	# bertcore_kernels ships inside the core distribution; a kernels-only install from an
	# older checkout would shadow it.
	$(PY) -m pip uninstall --quiet --yes bertcore-kernels 2>/dev/null || true
	$(PIP) -e ".[test]" $(addprefix -e ,$(HEADS))
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest tests benchmarks/test_bench_smoke.py benchmarks/test_bench_finetune.py

demo: $(STAMP)
	$(VENV)/bin/bertcore demo

bench: $(STAMP)
	$(VENV)/bin/bertcore bench encoder --output benchmarks/results

clean:
	rm -rf $(VENV)
