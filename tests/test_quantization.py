"""The 8-bit and 4-bit (bitsandbytes) paths train on CPU too, and `auto`
chooses 16-bit when the weights fit."""
import json

import pytest

import lora_finetune
from charlora.models import FIT_FRACTION, choose_quantization

GB = 1 << 30


@pytest.mark.parametrize("requested, weights, memory, expected", [
    ("auto", 12 * GB, 24 * GB, "none"),           # 6B in 16-bit on a 24 GB card fits... at 50%
    ("auto", int(FIT_FRACTION * 24 * GB) + 1, 24 * GB, "8bit"),
    ("auto", 12 * GB, None, "none"),              # unknown memory: don't slow down on a guess
    ("none", 100 * GB, 24 * GB, "none"),          # forced
    ("4bit", 1 * GB, 24 * GB, "4bit"),
])
def test_choose_quantization(requested, weights, memory, expected):
    assert choose_quantization(requested, weights, memory) == expected


@pytest.mark.parametrize("quant", ["8bit", "4bit"])
def test_quantized_training_on_cpu(quant, models_dir, tiny_dataset, tmp_path):
    rc = lora_finetune.main([
        "-m", "llama", "--models_dir", str(models_dir), "--loras_dir", str(tmp_path), "-d", str(tiny_dataset),
        "-l", "q", "-b", "4", "-e", "3", "--grad_accum", "1", "--learning_rate", "1e-2", "--sample_replies", "0",
        "--quantization", quant, "--dtype", "bf16",
    ])
    assert rc == 0
    record = json.loads((tmp_path / "q" / "charlora_config.json").read_text())
    assert record["quantization"] == quant
    losses = record["train_losses"]
    assert losses[-1] < 0.8 * losses[0], losses
