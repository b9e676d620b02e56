"""--eval_split: held-out reply loss after every epoch, and the best epoch's
adapter is the one saved."""
import json

import pytest
import torch

import lora_finetune
from charlora.evaluate import reply_loss
from charlora.samples import load_samples
from charlora.train import make_best_keeper, split_samples

HELD_OUT = [{"input": "Alice:Good morning, Bob. How many apples today?\nBob:", "output": "I have two apples for you, Alice."},
            {"input": "Alice:Good morning, Bob.\nBob:", "output": "Three apples."}]


def _lora_model(models_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(models_dir / "llama")
    tok.pad_token = tok.eos_token
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(models_dir / "llama", dtype=torch.float32),
                           LoraConfig(r=4, target_modules="all-linear"))
    return model, tok


def test_keeper_restores_the_better_epoch(models_dir):
    model, tok = _lora_model(models_dir)
    logs = []
    keeper = make_best_keeper(model, tok, HELD_OUT, 64, log=logs.append)
    keeper.score(step=3, epoch=1.0, batch_size=2)
    good = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    # A bad "second epoch": gradient ascent on the held-out samples themselves.
    from charlora.tokens import encode_sample

    enc = encode_sample(tok, HELD_OUT[0]["input"], HELD_OUT[0]["output"], 64)
    for _ in range(3):
        model.zero_grad()
        model(**{k: torch.tensor([v]) for k, v in enc.items()}).loss.backward()
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_" in n:
                    p.add_(p.grad.sign() * 0.05)
    keeper.score(step=6, epoch=2.0, batch_size=2)
    (step1, loss1), (step2, loss2) = keeper.history
    assert (step1, step2) == (3, 6) and loss2 > loss1
    assert "(best so far)" in logs[0] and "(best so far)" not in logs[1]

    assert model.training  # scoring hands the model back in training mode
    assert keeper.restore_best() is True
    for n, p in model.named_parameters():
        if "lora_" in n:
            assert torch.equal(p, good[n]), n
    assert reply_loss(model, tok, HELD_OUT, 64) == pytest.approx(loss1, rel=1e-6)


def test_keeper_keeps_the_last_epoch_when_it_is_best(models_dir):
    model, tok = _lora_model(models_dir)
    keeper = make_best_keeper(model, tok, HELD_OUT, 64, log=lambda _: None)
    keeper.score(step=2, epoch=1.0, batch_size=2)
    assert keeper.restore_best() is False


def test_eval_split_saves_the_best_scored_adapter(models_dir, tiny_dataset, tmp_path, capsys):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rc = lora_finetune.main(["-m", "llama", "--models_dir", str(models_dir), "--loras_dir", str(tmp_path),
                             "-d", str(tiny_dataset), "-l", "best", "-b", "4", "-e", "3", "--grad_accum", "1",
                             "--learning_rate", "1e-2", "--sample_replies", "0", "--dtype", "fp32",
                             "--eval_split", "0.25", "--early_stop", "0"])
    out = capsys.readouterr().out
    assert rc == 0
    record = json.loads((tmp_path / "best" / "charlora_config.json").read_text())
    assert record["train_samples"] == 12 and record["eval_samples"] == 4
    steps = [s for s, _ in record["eval_losses"]]
    assert steps == [3, 6, 9]  # 12 samples / batch 4 = 3 steps an epoch, scored after each
    losses = [loss for _, loss in record["eval_losses"]]
    assert record["eval_loss"] == min(losses)
    assert record["kept_step"] == steps[losses.index(min(losses))]
    assert f"best held-out loss {min(losses):.3f}" in out

    # The saved adapter is the scored one: same held-out loss on reload.
    samples = load_samples(tiny_dataset)
    _, held_out = split_samples(samples, 4)
    assert held_out == samples[-4:]  # the tail, not a random draw
    tok = AutoTokenizer.from_pretrained(models_dir / "llama")
    tok.pad_token = tok.eos_token
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(models_dir / "llama", dtype=torch.float32),
                                      tmp_path / "best")
    assert reply_loss(model, tok, held_out, 256) == pytest.approx(record["eval_loss"], rel=1e-5)


def test_keeper_stops_training_after_patience_stale_epochs(models_dir):
    from types import SimpleNamespace

    model, tok = _lora_model(models_dir)
    logs = []
    keeper = make_best_keeper(model, tok, HELD_OUT, 64, log=logs.append, patience=2)
    keeper.history, keeper.best = [(3, -1.0)], (-1.0, 3, {})  # a best no real epoch can beat
    args = SimpleNamespace(per_device_eval_batch_size=2)
    control = SimpleNamespace(should_training_stop=False, should_save=False)
    keeper.on_step_end(args, SimpleNamespace(epoch=2.0, global_step=6, max_steps=30), control)
    assert keeper.stale() == 1 and control.should_training_stop is False
    keeper.on_step_end(args, SimpleNamespace(epoch=2.5, global_step=8, max_steps=30), control)  # not an epoch end
    assert len(keeper.history) == 2
    keeper.on_step_end(args, SimpleNamespace(epoch=3.0, global_step=9, max_steps=30), control)
    assert keeper.stale() == 2 and control.should_training_stop is True and control.should_save is True
    assert keeper.stopped_early and "stopping early: 2 epochs without a better held-out loss" in logs
