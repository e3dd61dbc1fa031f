# afinar: `make demo` runs the main job on the embedded model, `make test` runs the tests.
# Both create .venv on first use and install everything into it.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# pytest-xdist workers (each gets its share of the cores: tests/conftest.py)
TEST_WORKERS ?= 2
STAMP  := $(VENV)/.afinar-installed
BENCH_STAMP := $(VENV)/.afinar-bench-installed
LLAMA_STAMP := $(VENV)/.afinar-llamacpp-tried

.PHONY: install demo test test-fast bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@bash scripts/install.sh "$(PYTHON)" "$(VENV)"
	@touch $(STAMP)

# `make demo` also builds llama.cpp (llama-cpp-python, 5-10 min once), which `afinar chat` and
# `afinar ask` then use (2-3x faster one reply at a time); where it does not build they use torch.
$(LLAMA_STAMP): $(STAMP)
	@echo "afinar: building llama.cpp for chat and ask (llama-cpp-python: 5-10 min, once; log: $(VENV)/llamacpp-build.log)"
	@$(PY) -m pip install --disable-pip-version-check "llama-cpp-python>=0.3" > $(VENV)/llamacpp-build.log 2>&1 \
		&& echo "afinar: llama.cpp built" \
		|| echo "afinar: llama.cpp did not build (see $(VENV)/llamacpp-build.log); chat and ask use the torch engine"
	@touch $(LLAMA_STAMP)

demo: $(STAMP) $(LLAMA_STAMP)
	$(VENV)/bin/afinar demo

test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --durations=15

test-fast: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) -m "not integration"

# The contenders TRL and llama-cpp-python are installed on the first run (llama.cpp builds from
# source: ~5 min once); the benchmarks then take ~55 min on 2 cores (grounding: ~30) and rewrite BENCHMARKS.md.
$(BENCH_STAMP): $(STAMP)
	@echo "afinar: installing the benchmark's contenders (TRL, llama-cpp-python: builds llama.cpp, ~5 min once)"
	@$(PY) -m pip install --quiet --disable-pip-version-check -e ".[bench]" 2>&1 | grep -v "is ignored" || true
	@$(PY) -c "import trl, llama_cpp" || { echo "afinar: the benchmark's contenders failed to install" >&2; exit 1; }
	@touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(PY) bench/train_speed.py
	$(PY) bench/train_scaling.py
	$(PY) bench/inference_speed.py
	$(PY) bench/inference_speed.py --prompt-tokens 600
	$(PY) bench/guard_bench.py > /dev/null
	$(PY) bench/guard_bench.py --domains gimnasio municipalidad buses dental reciclaje --out bench/results/guard_template_heldout.json > /dev/null
	$(PY) bench/guard_bench.py --generated --domains gimnasio municipalidad buses dental reciclaje > /dev/null
	$(PY) bench/grounding_bench.py --domains buses dental --no-base
	$(PY) bench/decode_weights.py
	$(PY) bench/eval_speed.py
	$(PY) bench/serve_load.py --seconds 90
	$(PY) bench/report.py

clean:
	rm -rf $(VENV) runs .pytest_cache
