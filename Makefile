# `make demo` and `make test` each build their own virtual environment first.
# torch==2.13.0 is installed before the project so pip never pulls the CUDA wheels.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: demo test test-fast lint bench clean browser

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test]"
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/sclabel demo

test: $(VENV)/.installed browser
	$(PY) -m pytest $(PYTEST_ARGS)

# Debian's chromium opens report.html in a test (tests/evaluation/test_html_report.py);
# best effort: without root or apt the browser part of that test is skipped, saying why
browser:
	@command -v chromium >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && \
	  { apt-get install -y -q chromium >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; }; }; } || \
	  echo "chromium not installed: the browser check of report.html will be skipped"

# the core without the tests marked slow (DDP, kill -9 resume, pretraining, ...): under 2 min
test-fast: $(VENV)/.installed
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) sclabel-demo .pytest_cache
