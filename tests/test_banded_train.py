"""lora_finetune --banded end to end on a one-layer tiny LLaMA (from config,
in-process): where the band layout is exact (one layer), its first logged
loss must equal per-sample training's; the held-out tail is scored per
sample; the saved adapter loads and is the best-scored one; and the
combinations it can't do are one-line errors."""
from __future__ import annotations

import json

import pytest
import torch

import lora_finetune
from conftest import MODEL_SEED, tiny_config


@pytest.fixture(scope="module")
def one_layer(tmp_path_factory, tiny_tokenizers):
    """A models folder holding `llama1`: the tiny LLaMA with one layer."""
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("banded") / "models"
    tok = tiny_tokenizers["llama-like"]
    config = tiny_config("llama", tok)
    config.num_hidden_layers = 1
    torch.manual_seed(MODEL_SEED)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(root / "llama1")
    tok.save_pretrained(root / "llama1")
    return root


def args(models, loras, dataset, name, *extra):
    # one step holds every training sample, no noise or dropout, fp32: the first
    # logged loss is the base model's mean loss over all training reply tokens
    return ["-m", "llama1", "--models_dir", str(models), "--loras_dir", str(loras), "-d", str(dataset), "-l", name,
            "-b", "16", "--grad_accum", "1", "-e", "3", "--learning_rate", "1e-2", "--sample_replies", "0",
            "--dtype", "fp32", "-r", "8", "--lora_dropout", "0", "--neftune_noise_alpha", "0",
            "--eval_split", "0.25", "--early_stop", "0", *extra]


@pytest.mark.slow
def test_banded_first_loss_equals_per_sample_and_the_adapter_loads(one_layer, tiny_dataset, tmp_path, capsys):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from charlora.evaluate import reply_loss
    from charlora.models import load_tokenizer

    loras = tmp_path / "loras"
    assert lora_finetune.main(args(one_layer, loras, tiny_dataset, "plain")) == 0
    assert lora_finetune.main(args(one_layer, loras, tiny_dataset, "band", "--banded")) == 0
    out, err = capsys.readouterr()
    assert "banded: 12 replies in " in out + err
    plain, band = (json.loads((loras / n / "charlora_config.json").read_text()) for n in ("plain", "band"))
    assert band["config"]["banded"] and band["train_samples"] == plain["train_samples"] == 12 and band["bands"] >= 1
    # one layer: every reply token sees exactly its sample's context, so the same loss
    assert band["train_losses"][0] == pytest.approx(plain["train_losses"][0], abs=1e-5)
    # ...and training moved on from there (step 1 runs at warm-up's rate 0, steps 2-3 learn)
    assert abs(band["train_losses"][-1] - band["train_losses"][0]) > 1e-3

    # the held-out tail (4 samples) was scored per sample after each epoch; the
    # adapter saved is the best-scoring one, and it loads
    samples = json.loads(tiny_dataset.read_text())
    assert band["eval_samples"] == 4 and len(band["eval_losses"]) == 3
    tok = load_tokenizer(one_layer / "llama1")
    base = AutoModelForCausalLM.from_pretrained(one_layer / "llama1", dtype=torch.float32)
    tuned = PeftModel.from_pretrained(base, loras / "band").eval()
    assert reply_loss(tuned, tok, samples[-4:], 256) == pytest.approx(band["eval_loss"], abs=1e-4)
    assert band["eval_loss"] == min(loss for _, loss in band["eval_losses"])


@pytest.mark.parametrize("extra", [["--packing"], ["--pcw_windows", "2"], ["--others_weight", "0.3"],
                                   ["--contrast_weight", "0.3"]])
def test_banded_refuses_what_it_cannot_do_in_one_line(one_layer, tiny_dataset, tmp_path, capsys, extra):
    rc = lora_finetune.main(args(one_layer, tmp_path / "loras", tiny_dataset, "t", "--banded", *extra))
    _, err = capsys.readouterr()
    assert rc == 2 and err.count("\n") == 1
    assert err.startswith(f"error: --banded can't be combined with {extra[0]}: a band has its own layout")
    assert not (tmp_path / "loras").exists()
