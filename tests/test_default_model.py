"""One real run on the default model (SmolLM2-135M-Instruct, installed by
scripts/setup.sh): the adapter lowers the loss of the character's replies,
reloads in PEFT, and replies end by themselves more often than the base."""
import json

import pytest
import torch

import lora_finetune
from charlora.dialogue import read_dialogue_file
from charlora.evaluate import reply_loss
from charlora.samples import build_samples
from conftest import REPO

pytestmark = pytest.mark.slow
MODEL = "SmolLM2-135M-Instruct"
MODELS = REPO / "models"


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # a 135M model is worth both cores
    yield
    torch.set_num_threads(before)


def test_default_model_learns_falstaff(tmp_path, two_threads, capsys):
    assert (MODELS / MODEL / "config.json").is_file(), "run `bash scripts/setup.sh` first (it installs the default model)"
    lines, _ = read_dialogue_file(REPO / "data" / "henry-iv-part-1.txt")
    samples = build_samples(lines, "Falstaff", 3)[:16]
    data = tmp_path / "falstaff.json"
    data.write_text(json.dumps(samples))

    code = lora_finetune.main(["-m", MODEL, "--models_dir", str(MODELS), "--loras_dir", str(tmp_path / "loras"),
                               "-d", str(data), "-l", "t", "-b", "4", "--grad_accum", "1", "-e", "3", "-c", "128",
                               "--sample_replies", "1"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "after 12 steps" in out

    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(MODELS / MODEL)
    base = AutoModelForCausalLM.from_pretrained(MODELS / MODEL, dtype=torch.bfloat16)
    before = reply_loss(base, tok, samples, 128)
    tuned = PeftModel.from_pretrained(base, tmp_path / "loras" / "t")
    after = reply_loss(tuned, tok, samples, 128)
    assert after < 0.9 * before, (before, after)
    record = json.loads((tmp_path / "loras" / "t" / "charlora_config.json").read_text())
    assert record["config"]["learning_rate"] == 1e-3 and record["quantization"] == "none" and record["dtype"] == "bfloat16"
