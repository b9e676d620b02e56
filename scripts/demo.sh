#!/usr/bin/env bash
# End to end on the default model, CPU is fine (~6 min on 2 cores):
# set up, make a dataset for Falstaff from Henry IV Part 1, train a short LoRA,
# then compare base and adapter on Falstaff's lines in another play.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY=.venv/bin/python
$PY prepare_dataset.py --name Falstaff -t data/henry-iv-part-1.txt -j falstaff.json
$PY lora_finetune.py -m SmolLM2-135M-Instruct -d falstaff.json -l falstaff-demo -e 1 --overwrite
$PY evaluate.py -m SmolLM2-135M-Instruct -l falstaff-demo --name Falstaff -t data/the-merry-wives-of-windsor.txt \
    --generate 4 --others 40 --max_new_tokens 40
