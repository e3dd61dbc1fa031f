# afinar: `make demo` runs the main job on the embedded model, `make test` runs the tests.
# Both create .venv on first use and install everything into it.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.afinar-installed

.PHONY: install demo test test-fast bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@bash scripts/install.sh "$(PYTHON)" "$(VENV)"
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/afinar demo

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not integration"

bench: $(STAMP)
	$(PY) bench/train_speed.py
	$(PY) bench/guard_bench.py > /dev/null
	$(PY) bench/serve_load.py --seconds 240
	$(PY) bench/report.py

clean:
	rm -rf $(VENV) runs .pytest_cache
