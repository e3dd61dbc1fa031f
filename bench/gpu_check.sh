#!/usr/bin/env bash
# GPU check (issue 20): afinar's training loop on random-weight Llama 1B and 8B shapes on one CUDA
# GPU; tokens/s, share of the bf16 matmul peak, peak memory against `afinar doctor`'s estimate.
#
#   bash bench/gpu_check.sh                 # from the repository root, on the GPU machine (~4-6 min on an H200)
#   bash bench/gpu_check.sh --cpu-tiny      # the same code path on a CPU in seconds (or GPU_CHECK_TINY=1)
#   PYTHON=/opt/venv/bin/python bash bench/gpu_check.sh --only 8b --no-qlora
#
# Made for a machine with no network whose image already has torch, transformers, peft and
# accelerate: afinar is installed over them with `pip install --no-deps --no-index` (no build
# isolation, so nothing is fetched), or, when pip cannot, used from src/ through PYTHONPATH.
# Nothing is downloaded: the models, tokenizer and data are built by bench/gpu_check.py.
# Arguments are passed to bench/gpu_check.py; results go to $OUT/gpu_check.json when $OUT is set.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-python}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
export PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1 TOKENIZERS_PARALLELISM=false

# 1. afinar from this checkout: already importable from here (a dev .venv), installed, or src/.
here_src="$(pwd)/src/afinar"
found="$("$PY" -c 'import afinar, os; print(os.path.dirname(os.path.abspath(afinar.__file__)))' 2>/dev/null || true)"
if [[ "$found" != "$here_src" ]]; then
    log="$(mktemp)"
    if "$PY" -m pip install --no-deps --no-index --no-build-isolation -e . >"$log" 2>&1; then
        echo "gpu_check: afinar installed from $(pwd) (pip --no-deps --no-index -e .)"
    else
        echo "gpu_check: pip install failed; using PYTHONPATH=src instead. pip said:"
        { grep -i -m 3 'error' "$log" || tail -n 3 "$log"; } | sed 's/^/    /'
        export PYTHONPATH="$(pwd)/src${PYTHONPATH:+:$PYTHONPATH}"
    fi
    rm -f "$log"
fi

# 2. what the training path imports, checked before minutes are spent building models.
"$PY" - <<'EOF'
import importlib.util, sys
need = ["torch", "transformers", "peft", "accelerate", "safetensors", "tokenizers", "pydantic", "yaml", "tqdm", "numpy", "jinja2"]
missing = [m for m in need if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"gpu_check: missing Python packages {missing}: install them from a local wheel folder "
             "(pip install --no-index --find-links DIR ...) and run again")
import afinar.data, afinar.recipes, afinar.training  # noqa: F401  (fails here, with the real error, before any model is built)
print("gpu_check: every package the training path needs is importable")
EOF

# 3. the check itself.
exec "$PY" bench/gpu_check.py "$@"
