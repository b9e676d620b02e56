"""Padding-free packing: several samples in one row with restarting position
ids give the same loss and gradients as the padded batch, on every family."""
import pytest
import torch

from charlora.tokens import encode_sample
from charlora.train import ReplyOnlyHead, make_collator
from conftest import FAMILIES


def _features(tok):
    return [encode_sample(tok, "Alice:Good morning.\nBob:", "Hi there, Alice.", 64),
            encode_sample(tok, "Bob:", "Fine.", 64),
            encode_sample(tok, "Carol:Where is the duke tonight, and who is with him?\nBob:", "Gone.", 64)]


def test_packed_batch_exact_tensors(tiny_tokenizers):
    tok = tiny_tokenizers["llama-like"]
    feats = [{"input_ids": [1, 5, 6], "attention_mask": [1, 1, 1], "labels": [-100, -100, 6]},
             {"input_ids": [1, 7], "attention_mask": [1, 1], "labels": [-100, 7]}]
    batch = make_collator(tok, packing=True)(feats)
    assert batch["input_ids"].tolist() == [[1, 5, 6, 1, 7]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert batch["labels"].tolist() == [[-100, -100, 6, -100, 7]]
    # no attention mask: transformers derives the per-sample (block-diagonal
    # causal) mask from the position restarts
    assert "attention_mask" not in batch


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "opt"])  # OPT: see the probe test
def test_packed_equals_padded_loss_and_grads(family, models_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(models_dir / family)
    tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    feats = _features(tok)
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(models_dir / family, dtype=torch.float32),
                           LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    head = ReplyOnlyHead(model)

    def loss_and_grads(batch):
        model.zero_grad()
        head.arm(batch["labels"])
        out = model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False)
        loss = head.loss(out, batch["labels"])
        loss.backward()
        return loss, {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    padded = make_collator(tok, packing=False)(feats)
    packed = make_collator(tok, packing=True)(feats)
    assert packed["input_ids"].shape == (1, sum(len(f["input_ids"]) for f in feats))
    loss_pad, g_pad = loss_and_grads(padded)
    loss_pack, g_pack = loss_and_grads(packed)
    torch.testing.assert_close(loss_pack, loss_pad, rtol=1e-5, atol=1e-6)
    for name, g in g_pack.items():
        torch.testing.assert_close(g, g_pad[name], rtol=1e-4, atol=1e-6, msg=name)
    head.handle.remove()


@pytest.mark.parametrize("family", FAMILIES)
def test_packing_probe_matches_what_the_family_does(family, models_dir):
    from transformers import AutoModelForCausalLM

    from charlora.models import supports_packing

    model = AutoModelForCausalLM.from_pretrained(models_dir / family, dtype=torch.float32)
    # OPT builds its mask without the position ids, so its packed samples
    # would see each other: training must fall back to padding there.
    assert supports_packing(model) == (family != "opt")


@pytest.mark.parametrize("family", ["llama", "opt"])
def test_packed_training_follows_the_padded_run(family, models_dir, tiny_dataset, tmp_path, capsys):
    """Same seed, no dropout or noise: --packing trains the same adapter, step
    by step; on OPT it says so and pads instead."""
    import json

    import lora_finetune

    def run(name, *extra):
        rc = lora_finetune.main(["-m", family, "--models_dir", str(models_dir), "--loras_dir", str(tmp_path),
                                 "-d", str(tiny_dataset), "-l", name, "-b", "4", "-e", "2", "--grad_accum", "1",
                                 "--learning_rate", "1e-2", "--sample_replies", "0", "--dtype", "fp32",
                                 "--lora_dropout", "0", "--neftune_noise_alpha", "0", *extra])
        assert rc == 0
        return json.loads((tmp_path / name / "charlora_config.json").read_text())

    padded = run("padded")
    packed = run("packed", "--packing")
    out = capsys.readouterr().out
    assert packed["packing"] is (family != "opt") and padded["packing"] is False
    assert ("padding per batch instead of --packing" in out) is (family == "opt")
    assert len(packed["train_losses"]) == len(padded["train_losses"]) == 8
    assert packed["train_losses"] == pytest.approx(padded["train_losses"], rel=1e-4)
