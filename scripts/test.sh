#!/usr/bin/env bash
# The test command: set up (idempotent), then the whole suite, slow tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The benchmarks' peers (TRL, bm25s): tests/test_bench_settings.py checks that
# the throughput bench gives TRL the same LoRA, data and accumulation as ours.
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-bench.txt
exec .venv/bin/python -m pytest "$@"
